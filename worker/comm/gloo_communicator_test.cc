// Ranks are threads sharing an in-memory store, except in the failure test:
// there they are processes (this binary re-executed, see ChildMain) that
// meet through a RendezvousService, so one of them can be SIGKILLed.
#include "worker/comm/gloo_communicator.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/cluster/rendezvous_service.h"
#include "common/auth.h"
#include "gtest/gtest.h"
#include "worker/comm/grpc_rendezvous_store.h"
#include "worker/comm/rendezvous_store.h"

extern char** environ;

namespace mlaserve {
namespace {

constexpr absl::Duration kTimeout = absl::Seconds(10);

// Runs body(comm) on `size` ranks, one thread each, on a fresh group.
void RunRanks(int size, uint64_t seed, const std::function<void(Communicator&)>& body,
              absl::Duration timeout = kTimeout) {
  static std::atomic<int> next_group{0};
  const std::string prefix = absl::StrCat("group", next_group++);
  InMemoryRendezvousStore store;
  std::vector<std::thread> ranks;
  for (int r = 0; r < size; ++r) {
    ranks.emplace_back([&, r] {
      SCOPED_TRACE(absl::StrCat("seed ", seed, ", rank ", r, " of ", size));
      auto comm = NewGlooCommunicator(store, prefix, r, size, {.timeout = timeout});
      ASSERT_TRUE(comm.ok()) << comm.status();
      EXPECT_EQ((*comm)->rank(), r);
      EXPECT_EQ((*comm)->size(), size);
      EXPECT_FALSE((*comm)->device_buffers());
      body(**comm);
    });
  }
  for (std::thread& t : ranks) t.join();
}

uint64_t FreshSeed() { return std::random_device{}(); }

// Small integers, so float sums are exact whatever order Gloo adds them in.
template <typename T>
std::vector<T> RandomValues(std::mt19937& rng, int64_t n) {
  std::uniform_int_distribution<int> value(-1000, 1000);
  std::vector<T> out(n);
  for (T& v : out) v = static_cast<T>(value(rng));
  return out;
}

class GlooTest : public ::testing::TestWithParam<int> {
 protected:
  int size() const { return GetParam(); }
};

template <typename T>
void CheckAllReduce(int size, DType dtype, int64_t count) {
  const uint64_t seed = FreshSeed();
  std::mt19937 rng(seed);
  std::vector<std::vector<T>> inputs;
  std::vector<T> expected(count, T{0});
  for (int r = 0; r < size; ++r) {
    inputs.push_back(RandomValues<T>(rng, count));
    for (int64_t i = 0; i < count; ++i) expected[i] += inputs[r][i];
  }
  RunRanks(size, seed, [&](Communicator& comm) {
    std::vector<T> data = inputs[comm.rank()];
    ASSERT_TRUE(comm.AllReduceSum(data.data(), count, dtype).ok());
    EXPECT_EQ(data, expected);
  });
}

TEST_P(GlooTest, AllReduceSum) {
  CheckAllReduce<float>(size(), DType::kF32, 1000);
  CheckAllReduce<double>(size(), DType::kF64, 777);
  CheckAllReduce<int32_t>(size(), DType::kI32, 3);
  CheckAllReduce<int64_t>(size(), DType::kI64, 1);
  // More than one of Gloo's 1 MiB segments per rank.
  CheckAllReduce<float>(size(), DType::kF32, 700'001);
}

TEST_P(GlooTest, AllGather) {
  const uint64_t seed = FreshSeed();
  std::mt19937 rng(seed);
  const int64_t count = std::uniform_int_distribution<int64_t>(1, 5000)(rng);
  std::vector<std::vector<int32_t>> inputs;
  std::vector<int32_t> expected;
  for (int r = 0; r < size(); ++r) {
    inputs.push_back(RandomValues<int32_t>(rng, count));
    expected.insert(expected.end(), inputs[r].begin(), inputs[r].end());
  }
  RunRanks(size(), seed, [&](Communicator& comm) {
    std::vector<int32_t> out(count * comm.size(), -1);
    ASSERT_TRUE(comm.AllGather(inputs[comm.rank()].data(), out.data(), count, DType::kI32).ok());
    EXPECT_EQ(out, expected);
  });
}

template <typename T>
void CheckReduceScatter(int size, DType dtype, int64_t count, uint64_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<T>> inputs;
  std::vector<T> sums(count * size, T{0});
  for (int r = 0; r < size; ++r) {
    inputs.push_back(RandomValues<T>(rng, count * size));
    for (int64_t i = 0; i < count * size; ++i) sums[i] += inputs[r][i];
  }
  RunRanks(size, seed, [&](Communicator& comm) {
    std::vector<T> out(count, T{-1});
    ASSERT_TRUE(comm.ReduceScatterSum(inputs[comm.rank()].data(), out.data(), count, dtype).ok());
    EXPECT_EQ(out, std::vector<T>(sums.begin() + comm.rank() * count, sums.begin() + (comm.rank() + 1) * count));
  });
}

TEST_P(GlooTest, ReduceScatterSum) {
  const uint64_t seed = FreshSeed();
  CheckReduceScatter<float>(size(), DType::kF32, 1 + seed % 3000, seed);
  CheckReduceScatter<int64_t>(size(), DType::kI64, 1, seed);
}

TEST_P(GlooTest, AllToAllVWithZeroCounts) {
  const uint64_t seed = FreshSeed();
  std::mt19937 rng(seed);
  const int n = size();
  // counts[src][dst]: mostly uneven, often zero; the last rank sends nothing
  // at all and rank 0 receives nothing from the others.
  std::vector<std::vector<int64_t>> counts(n, std::vector<int64_t>(n));
  std::uniform_int_distribution<int64_t> count(0, 5);
  for (int src = 0; src < n; ++src) {
    for (int dst = 0; dst < n; ++dst) {
      const bool silent = (n > 1 && src == n - 1) || (dst == 0 && src != 0);
      counts[src][dst] = silent ? 0 : count(rng);
    }
  }
  // Element i of src's block for dst, recognisable at the receiver.
  auto value = [](int src, int dst, int64_t i) { return static_cast<int64_t>(src * 1'000'000 + dst * 1000 + i); };
  RunRanks(n, seed, [&](Communicator& comm) {
    const int me = comm.rank();
    std::vector<int64_t> send_counts(n), recv_counts(n), send, expected;
    for (int p = 0; p < n; ++p) {
      send_counts[p] = counts[me][p];
      recv_counts[p] = counts[p][me];
      for (int64_t i = 0; i < counts[me][p]; ++i) send.push_back(value(me, p, i));
      for (int64_t i = 0; i < counts[p][me]; ++i) expected.push_back(value(p, me, i));
    }
    std::vector<int64_t> recv(expected.size(), -1);
    // Empty vectors give null data(): the communicator must cope.
    ASSERT_TRUE(comm.AllToAllV(send.data(), send_counts, recv.data(), recv_counts, DType::kI64).ok());
    EXPECT_EQ(recv, expected);
  });
}

TEST_P(GlooTest, ZeroSizeCollectives) {
  RunRanks(size(), 0, [&](Communicator& comm) {
    EXPECT_TRUE(comm.AllReduceSum(nullptr, 0, DType::kF32).ok());
    EXPECT_TRUE(comm.AllGather(nullptr, nullptr, 0, DType::kF32).ok());
    EXPECT_TRUE(comm.ReduceScatterSum(nullptr, nullptr, 0, DType::kF32).ok());
    const std::vector<int64_t> zeros(comm.size(), 0);
    EXPECT_TRUE(comm.AllToAllV(nullptr, zeros, nullptr, zeros, DType::kF32).ok());
    // Still usable afterwards.
    int64_t one = 1;
    ASSERT_TRUE(comm.AllReduceSum(&one, 1, DType::kI64).ok());
    EXPECT_EQ(one, comm.size());
  });
}

TEST_P(GlooTest, SendRecvRing) {
  if (size() == 1) GTEST_SKIP() << "no peer to send to";
  const uint64_t seed = FreshSeed();
  std::mt19937 rng(seed);
  std::vector<std::vector<float>> inputs;
  for (int r = 0; r < size(); ++r) inputs.push_back(RandomValues<float>(rng, 1 + r * 100));
  RunRanks(size(), seed, [&](Communicator& comm) {
    const int n = comm.size(), me = comm.rank();
    const int next = (me + 1) % n, prev = (me + n - 1) % n;
    std::vector<float> got(inputs[prev].size());
    // A Send completes only once its Recv is posted, so odd ranks receive
    // first, or the ring would wait on itself.
    auto send = [&] { return comm.Send(inputs[me].data(), inputs[me].size(), DType::kF32, next); };
    auto recv = [&] { return comm.Recv(got.data(), got.size(), DType::kF32, prev); };
    if (me % 2 == 0) {
      ASSERT_TRUE(send().ok());
      ASSERT_TRUE(recv().ok());
    } else {
      ASSERT_TRUE(recv().ok());
      ASSERT_TRUE(send().ok());
    }
    EXPECT_EQ(got, inputs[prev]);
  });
}

// Rank 0 sends scattered buffers to the last rank in one batch.
TEST_P(GlooTest, SendBatchArrivesInOrder) {
  if (size() == 1) GTEST_SKIP() << "no peer to send to";
  const uint64_t seed = FreshSeed();
  std::mt19937 rng(seed);
  std::vector<std::vector<float>> buffers;
  for (int i = 0; i < 5; ++i) buffers.push_back(RandomValues<float>(rng, 37));
  RunRanks(size(), seed, [&](Communicator& comm) {
    const int last = comm.size() - 1;
    if (comm.rank() == 0) {
      std::vector<const void*> send;
      for (const auto& b : buffers) send.push_back(b.data());
      ASSERT_TRUE(comm.SendBatch(send, 37, DType::kF32, last).ok());
    } else if (comm.rank() == last) {
      std::vector<std::vector<float>> got(5, std::vector<float>(37, -1));
      std::vector<void*> recv;
      for (auto& g : got) recv.push_back(g.data());
      ASSERT_TRUE(comm.RecvBatch(recv, 37, DType::kF32, 0).ok());
      EXPECT_EQ(got, buffers);
    }
  });
}

TEST_P(GlooTest, Barrier) {
  std::atomic<int> arrived{0};
  RunRanks(size(), 0, [&](Communicator& comm) {
    absl::SleepFor(absl::Milliseconds(30 * comm.rank()));
    arrived++;
    ASSERT_TRUE(comm.Barrier().ok());
    EXPECT_EQ(arrived.load(), comm.size());
  });
}

TEST_P(GlooTest, BadArgumentsFailAndBreak) {
  RunRanks(size(), 0, [&](Communicator& comm) {
    uint16_t half = 0;
    EXPECT_EQ(comm.AllReduceSum(&half, 1, DType::kBF16).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(comm.Barrier().code(), absl::StatusCode::kFailedPrecondition);
  });
  RunRanks(size(), 0, [&](Communicator& comm) {
    EXPECT_EQ(comm.Send(nullptr, 0, DType::kF32, comm.rank()).code(), absl::StatusCode::kInvalidArgument);
  });
  RunRanks(size(), 0, [&](Communicator& comm) {
    const std::vector<int64_t> too_few(comm.size() + 1, 0);
    EXPECT_EQ(comm.AllToAllV(nullptr, too_few, nullptr, too_few, DType::kF32).code(),
              absl::StatusCode::kInvalidArgument);
  });
}

INSTANTIATE_TEST_SUITE_P(Sizes, GlooTest, ::testing::Values(1, 2, 3, 4));

TEST(GlooFailureTest, SilentPeerTimesOutAndBreaksTheCommunicator) {
  std::atomic<bool> timed_out{false};
  RunRanks(
      2, 0,
      [&](Communicator& comm) {
        if (comm.rank() == 0) {
          float x;
          const absl::Time start = absl::Now();
          const absl::Status status = comm.Recv(&x, 1, DType::kF32, 1);
          EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
          EXPECT_NE(status.message().find("Recv"), absl::string_view::npos) << status;
          EXPECT_LT(absl::Now() - start, absl::Seconds(5));
          const absl::Status later = comm.Barrier();
          EXPECT_EQ(later.code(), absl::StatusCode::kFailedPrecondition) << later;
          EXPECT_NE(later.message().find("communicator broken by earlier error"), absl::string_view::npos);
          timed_out = true;
        } else {
          // Gloo closes its connections on a timeout, so the peer's next call fails.
          while (!timed_out) absl::SleepFor(absl::Milliseconds(10));
          const absl::Status status = comm.Barrier();
          EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
          EXPECT_EQ(comm.Barrier().code(), absl::StatusCode::kFailedPrecondition);
        }
      },
      absl::Milliseconds(500));
}

TEST(GlooFailureTest, RendezvousWithoutPeersTimesOut) {
  for (int rank : {0, 1}) {
    SCOPED_TRACE(absl::StrCat("rank ", rank));
    InMemoryRendezvousStore store;
    const absl::Time start = absl::Now();
    auto comm = NewGlooCommunicator(store, "lonely", rank, 2, {.timeout = absl::Milliseconds(300)});
    EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
    EXPECT_NE(comm.status().message().find("lonely/"), absl::string_view::npos) << comm.status();
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  }
}

// The failure test's processes: each is a rank that reduces in a loop until
// a call fails. Exit codes tell the parent what happened.
constexpr char kChildRankEnv[] = "MLASERVE_GLOO_CHILD_RANK";
constexpr char kChildSizeEnv[] = "MLASERVE_GLOO_CHILD_SIZE";
constexpr char kChildStoreEnv[] = "MLASERVE_GLOO_CHILD_STORE";
constexpr int kExitGotError = 3;
constexpr int kExitRendezvousFailed = 4;
constexpr int kExitNoError = 5;
constexpr absl::Duration kChildTimeout = absl::Seconds(2);
constexpr absl::Duration kChildMaxLoop = absl::Seconds(20);

int ChildMain(int rank, int size, const std::string& store_address) {
  GrpcRendezvousStore store(AuthorizedChannel(store_address, ""));
  auto comm = NewGlooCommunicator(store, "kill", rank, size, {.timeout = kChildTimeout});
  if (!comm.ok()) {
    std::cerr << "rank " << rank << ": " << comm.status() << "\n";
    return kExitRendezvousFailed;
  }
  bool announced = false;
  const absl::Time stop = absl::Now() + kChildMaxLoop;
  while (absl::Now() < stop) {
    std::vector<float> data(1000, 1.0f);
    const absl::Status status = (*comm)->AllReduceSum(data.data(), data.size(), DType::kF32);
    if (!status.ok()) {
      std::cerr << "rank " << rank << " got the expected error: " << status << "\n";
      return kExitGotError;
    }
    if (!announced) {
      // Tells the parent this rank is in the loop, so it may kill one.
      announced = store.Set(absl::StrCat("looping/", rank), "1").ok();
    }
  }
  return kExitNoError;
}

pid_t SpawnChild(int rank, int size, const std::string& store_address) {
  std::vector<std::string> env_strings = {
      absl::StrCat(kChildRankEnv, "=", rank),
      absl::StrCat(kChildSizeEnv, "=", size),
      absl::StrCat(kChildStoreEnv, "=", store_address),
  };
  for (char** e = environ; *e != nullptr; ++e) env_strings.push_back(*e);
  std::vector<char*> env;
  for (std::string& s : env_strings) env.push_back(s.data());
  env.push_back(nullptr);
  char arg0[] = "gloo_communicator_test_child";
  char* argv[] = {arg0, nullptr};
  pid_t pid = -1;
  // posix_spawn, not fork: this process already runs gRPC's threads.
  if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, env.data()) != 0) return -1;
  return pid;
}

// The exit status of `pid`, or -1 if it is still running after `timeout`.
int WaitChild(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    if (absl::Now() > deadline) return -1;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

TEST(GlooFailureTest, KilledPeerFailsTheOthersWithAStatus) {
  RendezvousService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  const std::string address = absl::StrCat("127.0.0.1:", port);

  constexpr int kSize = 3;
  constexpr int kVictim = 1;
  std::vector<pid_t> pids;
  for (int r = 0; r < kSize; ++r) {
    pids.push_back(SpawnChild(r, kSize, address));
    ASSERT_GT(pids.back(), 0);
  }
  GrpcRendezvousStore store(AuthorizedChannel(address, ""));
  for (int r = 0; r < kSize; ++r) {
    EXPECT_TRUE(store.Get(absl::StrCat("looping/", r), absl::Seconds(15)).ok()) << "rank " << r;
  }
  ASSERT_EQ(kill(pids[kVictim], SIGKILL), 0);
  const absl::Time killed = absl::Now();
  for (int r = 0; r < kSize; ++r) {
    SCOPED_TRACE(absl::StrCat("rank ", r));
    const int status = WaitChild(pids[r], kChildTimeout + absl::Seconds(5));
    if (status == -1) {
      kill(pids[r], SIGKILL);
      waitpid(pids[r], nullptr, 0);
      ADD_FAILURE() << "still running";
    } else if (r == kVictim) {
      EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
    } else {
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == kExitGotError) << status;
    }
  }
  EXPECT_LT(absl::Now() - killed, kChildTimeout + absl::Seconds(5));
  server->Shutdown();
}

}  // namespace
}  // namespace mlaserve

int main(int argc, char** argv) {
  if (const char* rank = std::getenv(mlaserve::kChildRankEnv)) {
    return mlaserve::ChildMain(std::atoi(rank), std::atoi(std::getenv(mlaserve::kChildSizeEnv)),
                               std::getenv(mlaserve::kChildStoreEnv));
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
