// Launches a local cluster: one coordinator and N workers as separate
// processes on loopback, sharing a cluster secret (a fresh random one unless
// given) so that no other local user can call their internal services.
// SIGINT/SIGTERM stop every process it started; the
// launcher exits when the coordinator does. A worker that dies is reported
// here and noticed by the coordinator through its missed heartbeats.
//
//   bazel run //:serve -- --model DIR --http_port 8000 --grpc_port 50051 --workers 4 \
//       [--tp 2] [--dp_attention 1] [--ep 2] [-- coordinator flags]
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/user_path.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(int, http_port, 8000, "OpenAI-compatible HTTP port");
ABSL_FLAG(int, grpc_port, 50051, "coordinator's public gRPC port");
ABSL_FLAG(int, internal_port, 50052, "coordinator's internal gRPC port (workers register there)");
ABSL_FLAG(std::string, cluster_secret_file, "",
          "the cluster secret for the coordinator and workers (default: a fresh random one, removed at exit)");
ABSL_FLAG(int, workers, 1, "worker processes");
ABSL_FLAG(std::string, worker_devices, "", "comma-separated --device of the workers, in turn (e.g. \"cuda:0,cuda:1\")");
ABSL_FLAG(std::string, worker_flags, "", "space-separated flags for every worker (e.g. \"--memory_gb=4\")");
ABSL_FLAG(int, tp, 0, "attention heads split this many ways per engine group (0: the planner's choice)");
ABSL_FLAG(int, dp_attention, 0, "data-parallel attention replicas per engine group (0: the planner's choice)");
ABSL_FLAG(int, ep, 0, "routed experts split this many ways per engine group (0: the planner's choice)");

namespace {

volatile sig_atomic_t g_signal = 0;
void HandleSignal(int sig) { g_signal = sig; }

// Binaries sit in Bazel's runfiles tree next to the launcher, or beside it
// (a device bundle's bin/).
std::string FindBinary(const char* argv0, const std::string& package_path) {
  const std::string beside = (std::filesystem::path(argv0).parent_path() /
                              std::filesystem::path(package_path).filename()).string();
  for (const std::string& candidate : {std::string(argv0) + ".runfiles/mlaserve/" + package_path, package_path, beside}) {
    if (std::filesystem::exists(candidate) && !std::filesystem::is_directory(candidate)) {
      return std::filesystem::absolute(candidate).string();
    }
  }
  if (const char* dir = std::getenv("RUNFILES_DIR")) return std::string(dir) + "/mlaserve/" + package_path;
  return package_path;
}

pid_t Spawn(const std::vector<std::string>& args) {
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid != 0) return pid;
  // Children die with the launcher even if it is killed without cleanup.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(1);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execv(argv[0], argv.data());
  std::cerr << "serve: cannot run " << args[0] << "\n";
  _exit(127);
}

// OpenMP threads (the CPU backend's) spin for a while after each parallel
// region, so workers sharing this machine's cores with a thread per core each
// spin against each other: two CPU workers on two cores decoded 3x slower
// than with a core each. Unless OMP_NUM_THREADS is set, each worker gets its
// share of the cores this process may run on.
void ShareCoresAmongWorkers(int workers) {
  if (std::getenv("OMP_NUM_THREADS") != nullptr) return;
  cpu_set_t cpus;
  const int cores = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
  setenv("OMP_NUM_THREADS", absl::StrCat(std::max(1, cores / workers)).c_str(), /*overwrite=*/1);
}

// A new file holding a random secret, readable by this user only; empty on
// failure (reason printed).
std::string MakeSecretFile() {
  char dir[] = "/tmp/mlaserve-serve-XXXXXX";
  if (mkdtemp(dir) == nullptr) {
    std::cerr << "serve: cannot make a directory for the cluster secret\n";
    return "";
  }
  unsigned char bytes[32];
  FILE* random = fopen("/dev/urandom", "rb");
  const bool read = random != nullptr && fread(bytes, 1, sizeof(bytes), random) == sizeof(bytes);
  if (random != nullptr) fclose(random);
  if (!read) {
    std::cerr << "serve: cannot read /dev/urandom\n";
    return "";
  }
  std::string secret;
  for (unsigned char b : bytes) absl::StrAppend(&secret, absl::Hex(b, absl::kZeroPad2));
  const std::string path = std::string(dir) + "/cluster_secret";
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0 || write(fd, secret.data(), secret.size()) != static_cast<ssize_t>(secret.size())) {
    std::cerr << "serve: cannot write " << path << "\n";
    if (fd >= 0) close(fd);
    return "";
  }
  close(fd);
  return path;
}

void StopAll(const std::map<pid_t, std::string>& children) {
  // SIGINT, not SIGTERM: a worker takes SIGTERM as "drain me first".
  for (const auto& [pid, name] : children) kill(pid, SIGINT);
  for (int i = 0; i < 50; ++i) {
    bool any = false;
    for (const auto& [pid, name] : children) any |= waitpid(pid, nullptr, WNOHANG) == 0;
    if (!any) return;
    usleep(100000);
  }
  for (const auto& [pid, name] : children) kill(pid, SIGKILL);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_model).empty()) {
    std::cerr << "serve: --model is required\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_workers) < 1) {
    std::cerr << "serve: --workers must be at least 1\n";
    return 2;
  }
  // Absolute, because the coordinator and workers may not share our directory.
  const std::string model = std::filesystem::absolute(mlaserve::ResolveUserPath(absl::GetFlag(FLAGS_model))).string();
  if (!std::filesystem::is_directory(model)) {
    std::cerr << "serve: no model directory " << model << "\n";
    return 2;
  }
  // Without SA_RESTART, so that a signal interrupts waitpid below.
  struct sigaction action = {};
  action.sa_handler = HandleSignal;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  const std::string grpc_port = absl::StrCat(absl::GetFlag(FLAGS_grpc_port));
  const std::string internal_port = absl::StrCat(absl::GetFlag(FLAGS_internal_port));
  const bool own_secret = absl::GetFlag(FLAGS_cluster_secret_file).empty();
  const std::string secret_file = own_secret ? MakeSecretFile() : absl::GetFlag(FLAGS_cluster_secret_file);
  if (secret_file.empty()) return 1;
  std::vector<std::string> coordinator_args = {FindBinary(argv[0], "coordinator/coordinator"),
                                               "--model=" + model,
                                               absl::StrCat("--http_port=", absl::GetFlag(FLAGS_http_port)),
                                               "--grpc_port=" + grpc_port,
                                               "--internal_port=" + internal_port,
                                               "--cluster_secret_file=" + secret_file,
                                               absl::StrCat("--workers=", absl::GetFlag(FLAGS_workers)),
                                               absl::StrCat("--tp=", absl::GetFlag(FLAGS_tp)),
                                               absl::StrCat("--dp_attention=", absl::GetFlag(FLAGS_dp_attention)),
                                               absl::StrCat("--ep=", absl::GetFlag(FLAGS_ep))};
  for (size_t i = 1; i < rest.size(); ++i) coordinator_args.push_back(rest[i]);
  std::map<pid_t, std::string> children;
  const pid_t coordinator = Spawn(coordinator_args);
  children[coordinator] = "coordinator";
  std::vector<std::string> worker_args = {FindBinary(argv[0], "worker/worker"),
                                         "--coordinator=127.0.0.1:" + internal_port,
                                         "--cluster_secret_file=" + secret_file};
  for (absl::string_view flag : absl::StrSplit(absl::GetFlag(FLAGS_worker_flags), ' ', absl::SkipEmpty())) {
    worker_args.emplace_back(flag);
  }
  const std::vector<std::string> devices =
      absl::StrSplit(absl::GetFlag(FLAGS_worker_devices), ',', absl::SkipEmpty());
  ShareCoresAmongWorkers(absl::GetFlag(FLAGS_workers));
  for (int i = 0; i < absl::GetFlag(FLAGS_workers); ++i) {
    std::vector<std::string> args = worker_args;
    if (!devices.empty()) args.push_back("--device=" + devices[i % devices.size()]);
    children[Spawn(args)] = absl::StrCat("worker ", i);
  }
  int exit_code = 0;
  while (g_signal == 0) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    const std::string name = children[pid];
    children.erase(pid);
    std::cerr << "serve: " << name << " exited ("
              << (WIFEXITED(status) ? absl::StrCat("status ", WEXITSTATUS(status))
                                    : absl::StrCat("signal ", WTERMSIG(status)))
              << ")\n";
    if (pid == coordinator) {
      exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
      break;
    }
  }
  StopAll(children);
  if (own_secret) std::filesystem::remove_all(std::filesystem::path(secret_file).parent_path());
  return exit_code;
}
