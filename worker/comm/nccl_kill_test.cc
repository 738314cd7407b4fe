// The NCCL watchdog against a real death: this binary starts one process per
// GPU (itself, re-executed with posix_spawn: fork after CUDA is initialized
// is unsafe), which all-reduce in a loop with a 3 s timeout; the test then
// SIGKILLs rank 1, and every other rank must get an error Status, and exit
// with kGotError, within the timeout plus some slack. A survivor still
// running then has hung in NCCL. The processes meet through a
// FileRendezvousStore in a fresh directory. Needs 2 GPUs: tagged gpu, run on
// the device machine.
#include <cuda_runtime.h>
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "worker/comm/nccl_communicator.h"
#include "worker/comm/rendezvous_store.h"

extern char** environ;

namespace mlaserve {
namespace {

// Set in a rank's environment; their presence makes main run the rank.
constexpr char kRankEnv[] = "NCCL_KILL_TEST_RANK";
constexpr char kSizeEnv[] = "NCCL_KILL_TEST_SIZE";
constexpr char kDirEnv[] = "NCCL_KILL_TEST_DIR";

constexpr absl::Duration kTimeout = absl::Seconds(3);
// For the abort and the process teardown after the timed-out call.
constexpr absl::Duration kSlack = absl::Seconds(10);
// Time for every rank to start CUDA, meet and finish one all-reduce.
constexpr absl::Duration kStartup = absl::Seconds(120);
// How long a rank that sees no error keeps going before it gives up.
constexpr absl::Duration kRankLifetime = absl::Seconds(180);
constexpr int kMaxRanks = 8;
// 4 MiB of floats: milliseconds per all-reduce, so the kill most likely
// lands with a collective in flight.
constexpr int64_t kCount = 1 << 20;

// A rank's exit code says how it ended.
enum ExitCode {
  kGotError = 42,     // a call returned an error Status: the expected end
  kInitFailed = 43,   // NewNcclCommunicator failed
  kNoError = 44,      // kRankLifetime passed without an error
  kWrongSum = 45,     // an all-reduce gave a wrong result
  kSetupFailed = 46,  // CUDA or the store failed outside the communicator
};

// A RendezvousStore in a directory, for ranks that are processes of one
// machine. A key is a file, written under a temporary name and then linked
// into place, so readers never see half a value and the first writer wins.
class FileRendezvousStore final : public RendezvousStore {
 public:
  explicit FileRendezvousStore(std::string dir) : dir_(std::move(dir)) {}

  absl::Status Set(const std::string& key, const std::string& value) override {
    const std::string path = Path(key);
    const std::string temporary = absl::StrCat(path, ".tmp", getpid());
    std::ofstream out(temporary, std::ios::binary);
    out.write(value.data(), value.size());
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", temporary));
    const int linked = link(temporary.c_str(), path.c_str());
    const int error = errno;
    unlink(temporary.c_str());
    if (linked != 0 && error != EEXIST) {
      return absl::InternalError(absl::StrCat("link ", path, ": ", std::strerror(error)));
    }
    if (linked != 0) {
      ASSIGN_OR_RETURN(const std::string existing, Get(key, absl::ZeroDuration()));
      if (existing != value) {
        return absl::FailedPreconditionError(absl::StrCat("rendezvous key \"", key, "\" already set to another value"));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      std::ifstream in(Path(key), std::ios::binary);
      if (in) return std::string(std::istreambuf_iterator<char>(in), {});
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("rendezvous key \"", key, "\" not set within ", absl::FormatDuration(timeout)));
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
  }

 private:
  // Keys hold '/', so each becomes one hex file name.
  std::string Path(const std::string& key) const { return absl::StrCat(dir_, "/", absl::BytesToHexString(key)); }

  const std::string dir_;
};

std::string ReadyKey(int rank) { return absl::StrCat("ready/", rank); }

// One rank: all-reduces rank + 1 everywhere until a call fails. It announces
// itself in the store after its first good all-reduce.
int RankMain(int rank, int size, const std::string& dir) {
  // CUDA starts before the rendezvous, so its start-up is not charged to
  // the communicator's timeout.
  if (cudaSetDevice(rank) != cudaSuccess || cudaFree(nullptr) != cudaSuccess) return kSetupFailed;
  FileRendezvousStore store(dir);
  auto comm = NewNcclCommunicator(store, "kill_test", rank, size, {.device = rank, .timeout = kTimeout});
  if (!comm.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, comm.status().ToString().c_str());
    return kInitFailed;
  }
  float* data = nullptr;
  if (cudaMalloc(&data, kCount * sizeof(float)) != cudaSuccess) return kSetupFailed;
  std::vector<float> host(kCount);
  const float want = size * (size + 1) / 2;
  const absl::Time give_up = absl::Now() + kRankLifetime;
  for (int64_t i = 0; absl::Now() < give_up; ++i) {
    std::fill(host.begin(), host.end(), static_cast<float>(rank + 1));
    // Synchronous both ways: the communicator's stream does not wait for
    // the default stream, and the all-reduce is over when the call returns.
    if (cudaMemcpy(data, host.data(), kCount * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaDeviceSynchronize() != cudaSuccess) {
      return kSetupFailed;
    }
    const absl::Status status = (*comm)->AllReduceSum(data, kCount, DType::kF32);
    if (!status.ok()) {
      std::fprintf(stderr, "rank %d, all-reduce %ld: %s\n", rank, static_cast<long>(i), status.ToString().c_str());
      return kGotError;
    }
    if (cudaMemcpy(host.data(), data, kCount * sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess) {
      return kSetupFailed;
    }
    if (std::any_of(host.begin(), host.end(), [&](float v) { return v != want; })) return kWrongSum;
    if (i == 0 && !store.Set(ReadyKey(rank), "").ok()) return kSetupFailed;
  }
  return kNoError;
}

int VisibleGpus() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

pid_t SpawnRank(int rank, int size, const std::string& dir) {
  std::vector<std::string> env = {absl::StrCat(kRankEnv, "=", rank), absl::StrCat(kSizeEnv, "=", size),
                                  absl::StrCat(kDirEnv, "=", dir)};
  for (char** e = environ; *e != nullptr; ++e) env.push_back(*e);
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string name = absl::StrCat("nccl_kill_test rank ", rank);
  char* argv[] = {name.data(), nullptr};
  pid_t pid = -1;
  const int error = posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, envp.data());
  EXPECT_EQ(error, 0) << "posix_spawn: " << std::strerror(error);
  return error == 0 ? pid : -1;
}

// The wait status of `pid` if it ends by `deadline`; otherwise it is killed.
std::optional<int> WaitUntil(pid_t pid, absl::Time deadline) {
  int status = 0;
  while (absl::Now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    absl::SleepFor(absl::Milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return std::nullopt;
}

std::string DescribeEnd(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status));
  return absl::StrCat("wait status ", status);
}

std::string NewStoreDir() {
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string pattern = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/nccl_kill_test.XXXXXX");
  return mkdtemp(pattern.data()) != nullptr ? pattern : "";
}

TEST(NcclKillTest, SurvivorsFailWithinTheTimeoutWhenARankIsKilled) {
  const int gpus = VisibleGpus();
  if (gpus < 2) GTEST_SKIP() << "needs 2 GPUs, " << gpus << " visible";
  const int size = std::min(gpus, kMaxRanks);
  const std::string dir = NewStoreDir();
  ASSERT_FALSE(dir.empty()) << "mkdtemp: " << std::strerror(errno);

  std::vector<pid_t> pids;
  for (int r = 0; r < size; ++r) pids.push_back(SpawnRank(r, size, dir));
  // Whatever happens below, no rank outlives the test.
  struct Reaper {
    std::vector<pid_t>& pids;
    ~Reaper() {
      for (pid_t pid : pids) {
        if (pid > 0) WaitUntil(pid, absl::Now());
      }
    }
  } reaper{pids};
  ASSERT_TRUE(std::none_of(pids.begin(), pids.end(), [](pid_t pid) { return pid <= 0; }));

  FileRendezvousStore store(dir);
  const absl::Time ready_by = absl::Now() + kStartup;
  for (int r = 0; r < size; ++r) {
    const absl::Status ready = store.Get(ReadyKey(r), ready_by - absl::Now()).status();
    ASSERT_TRUE(ready.ok()) << "rank " << r << " never finished an all-reduce: " << ready;
  }
  absl::SleepFor(absl::Milliseconds(500));

  ASSERT_EQ(kill(pids[1], SIGKILL), 0);
  const absl::Time killed = absl::Now();
  const std::optional<int> victim = WaitUntil(pids[1], killed + absl::Seconds(10));
  pids[1] = -1;
  ASSERT_TRUE(victim.has_value() && WIFSIGNALED(*victim)) << "rank 1 did not die of SIGKILL";

  for (int r = 0; r < size; ++r) {
    if (r == 1) continue;
    const std::optional<int> end = WaitUntil(pids[r], killed + kTimeout + kSlack);
    pids[r] = -1;
    const absl::Duration took = absl::Now() - killed;
    if (!end.has_value()) {
      ADD_FAILURE() << "rank " << r << " still running " << absl::FormatDuration(took)
                    << " after rank 1 was killed: hung in NCCL";
      continue;
    }
    std::printf("rank %d ended %s after rank 1 was killed: %s\n", r, absl::FormatDuration(took).c_str(),
                DescribeEnd(*end).c_str());
    EXPECT_TRUE(WIFEXITED(*end) && WEXITSTATUS(*end) == kGotError)
        << "rank " << r << ": " << DescribeEnd(*end) << ", want exit code " << kGotError << " (got an error Status)";
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mlaserve

int main(int argc, char** argv) {
  if (const char* rank = std::getenv(mlaserve::kRankEnv)) {
    const char* size = std::getenv(mlaserve::kSizeEnv);
    const char* dir = std::getenv(mlaserve::kDirEnv);
    if (size == nullptr || dir == nullptr) return mlaserve::kSetupFailed;
    return mlaserve::RankMain(std::atoi(rank), std::atoi(size), dir);
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
