// Checks the NCCL communicator against host computations on real GPUs: a
// group with one rank per visible GPU (ranks are threads of this process
// meeting through an InMemoryRendezvousStore) and a one-rank group on GPU 0.
// Inputs are random integers that every dtype holds exactly, sums included,
// so results are compared bit for bit; destination buffers are poisoned
// first and followed by a poisoned guard, so elements a call fails to write,
// or writes past the end, show. Needs GPUs: tagged gpu, run on the device
// machine (the process-kill test is nccl_kill_test.cc).
#include "worker/comm/nccl_communicator.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/dtype.h"
#include "gtest/gtest.h"
#include "worker/comm/rendezvous_store.h"

namespace mlaserve {
namespace {

#define ASSERT_OK(expr)                                                        \
  do {                                                                         \
    const absl::Status assert_ok_status_ = (expr);                             \
    ASSERT_TRUE(assert_ok_status_.ok()) << #expr << ": " << assert_ok_status_; \
  } while (0)

using Values = std::vector<int64_t>;
using Bytes = std::vector<uint8_t>;
using Group = std::vector<std::unique_ptr<Communicator>>;

constexpr DType kSumTypes[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kI32, DType::kI64};
// RandomValue's ranges keep sums of this many ranks exact.
constexpr int kMaxRanks = 8;
// 0xA5 bytes are never a value the tests expect: a tiny non-integer in each
// float type and a large negative number, beyond every sum, in the integer
// ones (0xFF would be -1 there, and NaN-free checks would miss it).
constexpr uint8_t kPoison = 0xA5;
constexpr size_t kGuardBytes = 64;
constexpr absl::Duration kTimeout = absl::Seconds(60);

int VisibleGpus() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

// Fresh for every run unless MLASERVE_TEST_SEED repeats one.
uint32_t Seed() {
  static const uint32_t seed = [] {
    const char* env = std::getenv("MLASERVE_TEST_SEED");
    return env != nullptr ? static_cast<uint32_t>(std::strtoul(env, nullptr, 10)) : std::random_device{}();
  }();
  return seed;
}

// Random integers exact in `dtype`, as is a sum of kMaxRanks of them
// (|sum| <= 128 fits the 8-bit significand of bf16).
int64_t RandomValue(DType dtype, std::mt19937& rng) {
  switch (dtype) {
    case DType::kI32: return std::uniform_int_distribution<int64_t>(-(1 << 27), 1 << 27)(rng);
    case DType::kI64: return std::uniform_int_distribution<int64_t>(-(int64_t{1} << 59), int64_t{1} << 59)(rng);
    default: return std::uniform_int_distribution<int64_t>(-16, 16)(rng);
  }
}

Values RandomValues(DType dtype, int64_t count, std::mt19937& rng) {
  Values values(count);
  for (int64_t& v : values) v = RandomValue(dtype, rng);
  return values;
}

// The f16 bits of an integer below 2048 in magnitude (dtype.h only decodes f16).
uint16_t SmallIntToF16(int64_t v) {
  if (v == 0) return 0;
  const uint16_t sign = v < 0 ? 0x8000 : 0;
  const uint64_t magnitude = v < 0 ? -v : v;
  const int exponent = std::bit_width(magnitude) - 1;  // <= 10
  const uint16_t mantissa = (magnitude << (10 - exponent)) & 0x3ff;
  return sign | (exponent + 15) << 10 | mantissa;
}

template <typename T>
void Put(uint8_t* out, T value) {
  std::memcpy(out, &value, sizeof(T));
}

Bytes Encode(DType dtype, const Values& values) {
  const size_t element_bytes = DTypeBytes(dtype);
  Bytes bytes(values.size() * element_bytes);
  for (size_t i = 0; i < values.size(); ++i) {
    uint8_t* out = bytes.data() + i * element_bytes;
    switch (dtype) {
      case DType::kF32: Put(out, static_cast<float>(values[i])); break;
      case DType::kBF16: Put(out, F32ToBf16(static_cast<float>(values[i]))); break;
      case DType::kF16: Put(out, SmallIntToF16(values[i])); break;
      case DType::kI32: Put(out, static_cast<int32_t>(values[i])); break;
      case DType::kI64: Put(out, values[i]); break;
      default: ADD_FAILURE() << "no encoding for " << DTypeName(dtype); return {};
    }
  }
  return bytes;
}

Values Sum(const std::vector<Values>& per_rank) {
  Values sum(per_rank[0].size(), 0);
  for (const Values& values : per_rank) {
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += values[i];
  }
  return sum;
}

Values Slice(const Values& values, int64_t begin, int64_t count) {
  return Values(values.begin() + begin, values.begin() + begin + count);
}

void Append(Values& to, const Values& from) { to.insert(to.end(), from.begin(), from.end()); }

std::string Describe(DType dtype, const uint8_t* element) {
  const size_t bytes = DTypeBytes(dtype);
  if (std::all_of(element, element + bytes, [](uint8_t b) { return b == kPoison; })) return "poison (never written)";
  if (dtype == DType::kI64) {
    int64_t v;
    std::memcpy(&v, element, sizeof(v));
    return absl::StrCat(v);
  }
  float f;
  ConvertToF32(dtype, element, 1, &f);
  return absl::StrCat(f);
}

// Reports the first few differing elements by index, then how many differ.
void ExpectSameElements(DType dtype, const Bytes& got, const Bytes& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const size_t element_bytes = DTypeBytes(dtype);
  const size_t count = got.size() / element_bytes;
  size_t differ = 0;
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* g = got.data() + i * element_bytes;
    const uint8_t* w = want.data() + i * element_bytes;
    if (std::memcmp(g, w, element_bytes) == 0) continue;
    if (++differ <= 5) {
      ADD_FAILURE() << what << ": element " << i << " is " << Describe(dtype, g) << ", want " << Describe(dtype, w);
    }
  }
  EXPECT_EQ(differ, 0u) << what << ": " << differ << " of " << count << " elements differ";
}

std::string Label(const char* op, DType dtype, int64_t count, int rank) {
  return absl::StrCat(op, " ", std::string(DTypeName(dtype)), " x", count, " on rank ", rank);
}

// One rank's buffer on the current device, followed by a guard. Uploads
// poison everything past the data and wait for the copy: the communicator's
// stream does not wait for the default stream.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    EXPECT_EQ(cudaMalloc(&ptr_, bytes_ + kGuardBytes), cudaSuccess);
    Upload({});
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr_); }

  void* get() const { return ptr_; }

  void Upload(const Bytes& data) {
    ASSERT_LE(data.size(), bytes_);
    Bytes image(bytes_ + kGuardBytes, kPoison);
    std::copy(data.begin(), data.end(), image.begin());
    EXPECT_EQ(cudaMemcpy(ptr_, image.data(), image.size(), cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }

  // The data, once the guard is checked.
  Bytes Download() const {
    Bytes image(bytes_ + kGuardBytes);
    EXPECT_EQ(cudaMemcpy(image.data(), ptr_, image.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_TRUE(std::all_of(image.begin() + bytes_, image.end(), [](uint8_t b) { return b == kPoison; }))
        << "written past the end of a " << bytes_ << "-byte buffer";
    image.resize(bytes_);
    return image;
  }

 private:
  const size_t bytes_;
  void* ptr_ = nullptr;
};

// Runs fn(rank) on one thread per rank, with the rank's GPU current.
void OnEveryRank(int size, const std::function<void(int rank)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&fn, r] {
      ASSERT_EQ(cudaSetDevice(r), cudaSuccess);
      fn(r);
    });
  }
  for (std::thread& t : threads) t.join();
}

// Ranks on GPUs 0..size-1, created concurrently, as a job's ranks would be.
Group NewGroup(int size, absl::Duration timeout) {
  static std::atomic<int> incarnation{0};
  const std::string prefix = absl::StrCat("nccl_test/", incarnation++);
  InMemoryRendezvousStore store;
  std::vector<absl::StatusOr<std::unique_ptr<Communicator>>> made;
  for (int r = 0; r < size; ++r) made.emplace_back(absl::UnknownError("not made"));
  OnEveryRank(size,
              [&](int r) { made[r] = NewNcclCommunicator(store, prefix, r, size, {.device = r, .timeout = timeout}); });
  Group group;
  for (int r = 0; r < size; ++r) {
    if (!made[r].ok()) {
      ADD_FAILURE() << "rank " << r << " of " << size << ": " << made[r].status();
      continue;
    }
    EXPECT_EQ((*made[r])->name(), "nccl");
    EXPECT_EQ((*made[r])->rank(), r);
    EXPECT_EQ((*made[r])->size(), size);
    EXPECT_TRUE((*made[r])->device_buffers());
    group.push_back(std::move(*made[r]));
  }
  return group;
}

// Param 1: a one-rank group on GPU 0; param 0: one rank per visible GPU
// (at most kMaxRanks), skipped with fewer than two. Each group is made once
// (initialization takes seconds) and shared by the suite's tests.
class NcclCollectivesTest : public testing::TestWithParam<int> {
 protected:
  static void TearDownTestSuite() { Groups().clear(); }

  void SetUp() override {
    const int gpus = VisibleGpus();
    size_ = GetParam() == 0 ? std::min(gpus, kMaxRanks) : GetParam();
    if (GetParam() == 0 && size_ < 2) GTEST_SKIP() << "needs 2 GPUs, " << gpus << " visible";
    if (size_ > gpus) GTEST_SKIP() << "needs " << size_ << " GPUs, " << gpus << " visible";
    Group& group = Groups()[size_];
    if (group.empty()) group = NewGroup(size_, kTimeout);
    ASSERT_EQ(static_cast<int>(group.size()), size_);
    group_ = &group;
    std::printf("seed %u (MLASERVE_TEST_SEED=%u repeats it), %d ranks\n", Seed(), Seed(), size_);
    rng_.seed(Seed());
  }

  Communicator& comm(int rank) { return *(*group_)[rank]; }

  std::vector<Values> RandomInputs(DType dtype, int64_t count) {
    std::vector<Values> inputs;
    for (int r = 0; r < size_; ++r) inputs.push_back(RandomValues(dtype, count, rng_));
    return inputs;
  }

  int size_ = 0;
  std::mt19937 rng_;

 private:
  static std::map<int, Group>& Groups() {
    static auto* groups = new std::map<int, Group>;
    return *groups;
  }

  Group* group_ = nullptr;
};

INSTANTIATE_TEST_SUITE_P(Sizes, NcclCollectivesTest, testing::Values(1, 0),
                         [](const testing::TestParamInfo<int>& info) {
                           return std::string(info.param == 1 ? "OneRank" : "OneRankPerGpu");
                         });

// Counts that span NCCL's protocols: a few elements (LL), tens of kilobytes
// (LL128) and megabytes (Simple), odd so no size is a multiple of anything.
constexpr int64_t kCounts[] = {1, 5, 4099, (1 << 20) + 3};

TEST_P(NcclCollectivesTest, AllReduceSumMatchesHostSum) {
  for (DType dtype : kSumTypes) {
    for (int64_t count : kCounts) {
      const std::vector<Values> inputs = RandomInputs(dtype, count);
      const Bytes want = Encode(dtype, Sum(inputs));
      OnEveryRank(size_, [&](int r) {
        DeviceBuffer data(count * DTypeBytes(dtype));
        data.Upload(Encode(dtype, inputs[r]));
        ASSERT_OK(comm(r).AllReduceSum(data.get(), count, dtype));
        ExpectSameElements(dtype, data.Download(), want, Label("AllReduceSum", dtype, count, r));
      });
    }
  }
}

TEST_P(NcclCollectivesTest, AllGatherConcatenatesInRankOrder) {
  for (DType dtype : kSumTypes) {
    for (int64_t count : kCounts) {
      const std::vector<Values> inputs = RandomInputs(dtype, count);
      Values all;
      for (const Values& input : inputs) Append(all, input);
      const Bytes want = Encode(dtype, all);
      OnEveryRank(size_, [&](int r) {
        DeviceBuffer send(count * DTypeBytes(dtype));
        DeviceBuffer recv(size_ * count * DTypeBytes(dtype));
        send.Upload(Encode(dtype, inputs[r]));
        ASSERT_OK(comm(r).AllGather(send.get(), recv.get(), count, dtype));
        ExpectSameElements(dtype, recv.Download(), want, Label("AllGather", dtype, count, r));
      });
    }
  }
}

TEST_P(NcclCollectivesTest, ReduceScatterSumGivesEachRankItsBlock) {
  for (DType dtype : kSumTypes) {
    for (int64_t count : kCounts) {
      const std::vector<Values> inputs = RandomInputs(dtype, size_ * count);
      const Values sum = Sum(inputs);
      OnEveryRank(size_, [&](int r) {
        DeviceBuffer send(size_ * count * DTypeBytes(dtype));
        DeviceBuffer recv(count * DTypeBytes(dtype));
        send.Upload(Encode(dtype, inputs[r]));
        ASSERT_OK(comm(r).ReduceScatterSum(send.get(), recv.get(), count, dtype));
        ExpectSameElements(dtype, recv.Download(), Encode(dtype, Slice(sum, r * count, count)),
                           Label("ReduceScatterSum", dtype, count, r));
      });
    }
  }
}

TEST_P(NcclCollectivesTest, AllToAllVWithUnevenAndZeroCounts) {
  for (DType dtype : kSumTypes) {
    for (int64_t max_count : {5, 70000}) {
      // counts[src][dst]; a third are zero, and the last rank sends nothing
      // at all (it still receives).
      std::vector<std::vector<int64_t>> counts(size_, std::vector<int64_t>(size_));
      for (int src = 0; src < size_; ++src) {
        for (int64_t& c : counts[src]) {
          c = std::uniform_int_distribution<int>(0, 2)(rng_) == 0
                  ? 0
                  : std::uniform_int_distribution<int64_t>(1, max_count)(rng_);
        }
      }
      if (size_ > 1) std::fill(counts[size_ - 1].begin(), counts[size_ - 1].end(), 0);
      std::vector<Values> inputs;
      for (int src = 0; src < size_; ++src) {
        int64_t total = 0;
        for (int64_t c : counts[src]) total += c;
        inputs.push_back(RandomValues(dtype, total, rng_));
      }
      OnEveryRank(size_, [&](int r) {
        std::vector<int64_t> send_counts = counts[r], recv_counts;
        Values want;
        for (int src = 0; src < size_; ++src) {
          int64_t offset = 0;
          for (int dst = 0; dst < r; ++dst) offset += counts[src][dst];
          recv_counts.push_back(counts[src][r]);
          Append(want, Slice(inputs[src], offset, counts[src][r]));
        }
        DeviceBuffer send(inputs[r].size() * DTypeBytes(dtype));
        DeviceBuffer recv(want.size() * DTypeBytes(dtype));
        send.Upload(Encode(dtype, inputs[r]));
        ASSERT_OK(comm(r).AllToAllV(send.get(), send_counts, recv.get(), recv_counts, dtype));
        ExpectSameElements(dtype, recv.Download(), Encode(dtype, want),
                           Label("AllToAllV", dtype, static_cast<int64_t>(want.size()), r));
      });
    }
  }
}

// Rank 0 sends first and every other rank receives first, so the ring
// completes whatever NCCL buffers: each Send returns only once received.
TEST_P(NcclCollectivesTest, SendRecvAroundTheRing) {
  if (size_ < 2) GTEST_SKIP() << "Send and Recv need two ranks";
  for (DType dtype : {DType::kF32, DType::kI64}) {
    for (int64_t count : kCounts) {
      const std::vector<Values> inputs = RandomInputs(dtype, count);
      OnEveryRank(size_, [&](int r) {
        const int next = (r + 1) % size_, previous = (r + size_ - 1) % size_;
        DeviceBuffer send(count * DTypeBytes(dtype));
        DeviceBuffer recv(count * DTypeBytes(dtype));
        send.Upload(Encode(dtype, inputs[r]));
        if (r == 0) ASSERT_OK(comm(r).Send(send.get(), count, dtype, next));
        ASSERT_OK(comm(r).Recv(recv.get(), count, dtype, previous));
        if (r != 0) ASSERT_OK(comm(r).Send(send.get(), count, dtype, next));
        ExpectSameElements(dtype, recv.Download(), Encode(dtype, inputs[previous]), Label("Recv", dtype, count, r));
      });
    }
  }
}

// Rank 0 sends scattered device buffers to rank 1 in batches (more than one
// NCCL group's worth).
TEST_P(NcclCollectivesTest, SendBatchArrivesInOrder) {
  if (size_ < 2) GTEST_SKIP() << "Send and Recv need two ranks";
  constexpr int kBuffers = 70;
  constexpr int64_t kCount = 1000;
  std::vector<Values> inputs;
  for (int i = 0; i < kBuffers; ++i) inputs.push_back(RandomInputs(DType::kF32, kCount)[0]);
  OnEveryRank(size_, [&](int r) {
    if (r > 1) return;
    std::vector<std::unique_ptr<DeviceBuffer>> buffers;
    std::vector<void*> pointers;
    for (int i = 0; i < kBuffers; ++i) {
      buffers.push_back(std::make_unique<DeviceBuffer>(kCount * sizeof(float)));
      if (r == 0) buffers.back()->Upload(Encode(DType::kF32, inputs[i]));
      pointers.push_back(buffers.back()->get());
    }
    if (r == 0) {
      ASSERT_OK(comm(r).SendBatch(std::vector<const void*>(pointers.begin(), pointers.end()), kCount, DType::kF32, 1));
    } else {
      ASSERT_OK(comm(r).RecvBatch(pointers, kCount, DType::kF32, 0));
      for (int i = 0; i < kBuffers; ++i) {
        ExpectSameElements(DType::kF32, buffers[i]->Download(), Encode(DType::kF32, inputs[i]),
                           Label("RecvBatch", DType::kF32, kCount, i));
      }
    }
  });
}

TEST_P(NcclCollectivesTest, ZeroSizedCallsSucceedAndKeepRanksInStep) {
  OnEveryRank(size_, [&](int r) {
    const std::vector<int64_t> zeros(size_, 0);
    ASSERT_OK(comm(r).AllReduceSum(nullptr, 0, DType::kF32));
    ASSERT_OK(comm(r).AllGather(nullptr, nullptr, 0, DType::kBF16));
    ASSERT_OK(comm(r).ReduceScatterSum(nullptr, nullptr, 0, DType::kI64));
    ASSERT_OK(comm(r).AllToAllV(nullptr, zeros, nullptr, zeros, DType::kF16));
    if (size_ > 1) {
      ASSERT_OK(comm(r).Send(nullptr, 0, DType::kI32, (r + 1) % size_));
      ASSERT_OK(comm(r).Recv(nullptr, 0, DType::kI32, (r + size_ - 1) % size_));
    }
    // A real call after them still pairs up with the other ranks' calls.
    DeviceBuffer data(sizeof(int32_t));
    data.Upload(Encode(DType::kI32, {r + 1}));
    ASSERT_OK(comm(r).AllReduceSum(data.get(), 1, DType::kI32));
    ExpectSameElements(DType::kI32, data.Download(), Encode(DType::kI32, {size_ * (size_ + 1) / 2}),
                       Label("AllReduceSum after zero-sized calls", DType::kI32, 1, r));
  });
}

// Ranks arrive at staggered times; none may leave before all have arrived.
TEST_P(NcclCollectivesTest, BarrierWaitsForEveryRank) {
  for (int round = 0; round < 3; ++round) {
    std::vector<std::atomic<bool>> arrived(size_);
    OnEveryRank(size_, [&](int r) {
      absl::SleepFor(absl::Milliseconds(50) * r);
      arrived[r] = true;
      ASSERT_OK(comm(r).Barrier());
      for (int other = 0; other < size_; ++other) {
        EXPECT_TRUE(arrived[other]) << "rank " << r << " left the barrier before rank " << other << " arrived";
      }
    });
  }
}

TEST(NcclCommunicatorTest, RejectsBadRankAndTimeout) {
  InMemoryRendezvousStore store;
  EXPECT_EQ(NewNcclCommunicator(store, "bad", 2, 2, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NewNcclCommunicator(store, "bad", 0, 0, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NewNcclCommunicator(store, "bad", 0, 1, {.timeout = absl::ZeroDuration()}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(NcclCommunicatorTest, AnErrorBreaksTheCommunicator) {
  if (VisibleGpus() < 1) GTEST_SKIP() << "no GPU";
  Group group = NewGroup(1, kTimeout);
  ASSERT_EQ(group.size(), 1u);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  DeviceBuffer data(16);
  const absl::Status unsupported = group[0]->AllReduceSum(data.get(), 16, DType::kF8E4M3);
  EXPECT_EQ(unsupported.code(), absl::StatusCode::kInvalidArgument) << unsupported;
  const absl::Status later = group[0]->Barrier();
  EXPECT_EQ(later.code(), absl::StatusCode::kFailedPrecondition) << later;
  EXPECT_NE(later.message().find("F8_E4M3"), absl::string_view::npos) << "should name the first error: " << later;
}

// The watchdog without killing anything: rank 0 all-reduces alone, so its
// kernel waits for peers that never come, and the call must give up at the
// timeout, abort, and fail every later call at once.
TEST(NcclCommunicatorTest, SilentPeerTimesOutThenCallsFailAtOnce) {
  if (VisibleGpus() < 2) GTEST_SKIP() << "needs 2 GPUs, " << VisibleGpus() << " visible";
  // Also bounds the group's initialization, which takes about a second.
  constexpr absl::Duration kShortTimeout = absl::Seconds(3);
  constexpr int64_t kCount = 1 << 16;
  Group group = NewGroup(2, kShortTimeout);
  ASSERT_EQ(group.size(), 2u);
  // Together first, so the connections exist: the stuck call is then a
  // kernel waiting on the device, as when a peer dies mid-run.
  OnEveryRank(2, [&](int r) {
    DeviceBuffer data(kCount * sizeof(float));
    ASSERT_OK(group[r]->AllReduceSum(data.get(), kCount, DType::kF32));
  });
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  DeviceBuffer data(kCount * sizeof(float));
  const absl::Time start = absl::Now();
  const absl::Status alone = group[0]->AllReduceSum(data.get(), kCount, DType::kF32);
  const absl::Duration took = absl::Now() - start;
  std::printf("lone all-reduce failed after %s: %s\n", absl::FormatDuration(took).c_str(), alone.ToString().c_str());
  EXPECT_EQ(alone.code(), absl::StatusCode::kDeadlineExceeded) << alone;
  EXPECT_GE(took, kShortTimeout);
  EXPECT_LT(took, kShortTimeout + absl::Seconds(10));

  const absl::Time again = absl::Now();
  EXPECT_EQ(group[0]->Barrier().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_LT(absl::Now() - again, absl::Seconds(1));
}

}  // namespace
}  // namespace mlaserve
