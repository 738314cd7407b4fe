#include "tests/local_cluster.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/auth.h"
#include "common/status_macros.h"

namespace mlaserve {

namespace {

// Binds a loopback TCP socket to `port` (0: one the kernel picks) and closes
// it; the port bound, or 0 when it was taken.
int BindAndRelease(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  int bound = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    socklen_t len = sizeof(addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    bound = ntohs(addr.sin_port);
  }
  close(fd);
  return bound;
}

}  // namespace

// Below the kernel's ephemeral range: the workers listen on ports the kernel
// picks from that range, and one took a coordinator's port chosen there
// before the coordinator bound it (its HTTP port is bound last, after the
// groups form).
int FreePort() {
  int ephemeral_low = 32768;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> ephemeral_low;
  static std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> port(10000, std::max(10001, ephemeral_low - 1));
  for (int attempt = 0; attempt < 1000; ++attempt) {
    if (const int bound = BindAndRelease(port(rng)); bound != 0) return bound;
  }
  return BindAndRelease(0);
}

std::string TestDevice() {
  const char* device = std::getenv("MLASERVE_TEST_DEVICE");
  return device != nullptr && *device != '\0' ? device : "cpu";
}

// The lines the launcher, coordinator and workers print (all share the
// launcher's stderr), kept to explain a failed start-up.
class LauncherLog {
 public:
  void Add(std::string line) {
    std::lock_guard<std::mutex> lock(mu_);
    // serve.cc reports a child's exit so; a worker that dies during start-up
    // leaves the cluster unhealthy for good while the launcher keeps running.
    if (absl::StartsWith(line, "serve: worker ") && absl::StrContains(line, " exited (")) worker_exited_ = true;
    tail_.push_back(std::move(line));
    if (tail_.size() > 20) tail_.pop_front();
  }
  bool worker_exited() const {
    std::lock_guard<std::mutex> lock(mu_);
    return worker_exited_;
  }
  std::string Tail() const {
    std::lock_guard<std::mutex> lock(mu_);
    return absl::StrCat("; the cluster's last lines:\n", absl::StrJoin(tail_, "\n"));
  }

 private:
  mutable std::mutex mu_;
  std::deque<std::string> tail_;
  bool worker_exited_ = false;
};

namespace {

// Copies what arrives on `fd` to our stderr, as before the pipe, and line by
// line into `log`, until every writer has closed it.
void Relay(int fd, std::shared_ptr<LauncherLog> log) {
  char buffer[4096];
  std::string pending;
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    const ssize_t echoed = write(STDERR_FILENO, buffer, n);
    (void)echoed;  // best effort: a lost echo loses no test result
    pending.append(buffer, n);
    for (size_t end; (end = pending.find('\n')) != std::string::npos; pending.erase(0, end + 1)) {
      log->Add(pending.substr(0, end));
    }
  }
  close(fd);
}

// The launcher: deploy/serve in Bazel's runfiles (a test's working directory),
// else `serve` beside this binary (a device bundle's bin/, run without Bazel).
absl::StatusOr<std::string> LauncherPath() {
  if (std::filesystem::is_regular_file("deploy/serve")) return std::string("deploy/serve");
  std::error_code error;
  const std::filesystem::path beside = std::filesystem::read_symlink("/proc/self/exe", error).parent_path() / "serve";
  if (!error && std::filesystem::is_regular_file(beside)) return beside.string();
  return absl::NotFoundError(absl::StrCat("no launcher: neither deploy/serve (Bazel runfiles) nor ", beside.string()));
}

// `flags`, plus --device=TestDevice() unless they choose a device already.
std::vector<std::string> WithTestDevice(std::vector<std::string> flags) {
  for (const std::string& flag : flags) {
    if (flag == "--device" || absl::StartsWith(flag, "--device=")) return flags;
  }
  flags.push_back("--device=" + TestDevice());
  return flags;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(const std::string& model_dir, int workers,
                                                                  const std::vector<std::string>& coordinator_flags,
                                                                  const std::vector<std::string>& worker_flags) {
  absl::StatusOr<std::string> launcher = LauncherPath();
  if (!launcher.ok()) return launcher.status();
  auto cluster = std::unique_ptr<LocalCluster>(new LocalCluster());
  cluster->http_port_ = FreePort();
  cluster->grpc_port_ = FreePort();
  cluster->internal_port_ = FreePort();
  char dir[] = "/tmp/local_cluster-XXXXXX";
  if (mkdtemp(dir) == nullptr) return absl::InternalError("cannot make a directory for the cluster secret");
  cluster->secret_dir_ = dir;
  cluster->cluster_secret_ = absl::StrCat("test-secret-", getpid(), "-", FreePort());
  std::ofstream(cluster->secret_dir_ + "/secret") << cluster->cluster_secret_ << "\n";
  std::vector<std::string> args = {*launcher,
                                   "--model=" + std::filesystem::absolute(model_dir).string(),
                                   absl::StrCat("--http_port=", cluster->http_port_),
                                   absl::StrCat("--grpc_port=", cluster->grpc_port_),
                                   absl::StrCat("--internal_port=", cluster->internal_port_),
                                   "--cluster_secret_file=" + cluster->secret_dir_ + "/secret",
                                   absl::StrCat("--workers=", workers),
                                   "--worker_flags=" + absl::StrJoin(WithTestDevice(worker_flags), " "),
                                   "--"};
  args.insert(args.end(), coordinator_flags.begin(), coordinator_flags.end());
  cluster->worker_flags_ = WithTestDevice(worker_flags);
  if (absl::Status launched = cluster->Launch(std::move(args)); !launched.ok()) return launched;
  if (absl::Status healthy = cluster->AwaitHealthy(absl::Seconds(120)); !healthy.ok()) return healthy;
  return cluster;
}

absl::Status LocalCluster::Launch(std::vector<std::string> args) {
  int pipe_fds[2];
  // Close-on-exec, so that no other process started meanwhile holds the pipe open.
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2");
  launcher_ = fork();
  if (launcher_ == 0) {
    dup2(pipe_fds[1], STDERR_FILENO);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  const int fork_errno = errno;
  close(pipe_fds[1]);
  if (launcher_ < 0) {
    close(pipe_fds[0]);
    return absl::ErrnoToStatus(fork_errno, "fork");
  }
  log_ = std::make_shared<LauncherLog>();
  // Detached: it ends when the last process of the cluster has exited, maybe after us.
  std::thread(Relay, pipe_fds[0], log_).detach();
  return absl::OkStatus();
}

absl::Status LocalCluster::AwaitHealthy(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (Get("/health").status == 200) return absl::OkStatus();
    if (waitpid(launcher_, nullptr, WNOHANG) == launcher_) {
      launcher_ = -1;
      absl::SleepFor(absl::Milliseconds(200));  // lets the relay catch up with the last lines
      return absl::InternalError(absl::StrCat("the cluster exited during start-up", log_->Tail()));
    }
    if (log_->worker_exited()) return absl::InternalError(absl::StrCat("a worker exited during start-up", log_->Tail()));
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("the cluster did not become healthy within ", absl::FormatDuration(timeout), log_->Tail()));
}

ChildProcess::ChildProcess(std::vector<std::string> args) {
  pid_ = fork();
  if (pid_ == 0) {
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
}

void ChildProcess::Stop(int signal) {
  if (pid_ <= 0) return;
  Signal(signal);
  Wait();
}

void ChildProcess::Signal(int signal) { kill(pid_, signal); }

int ChildProcess::Wait() {
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

LocalCluster::~LocalCluster() {
  extra_workers_.clear();
  if (launcher_ > 0) {
    kill(launcher_, SIGTERM);
    waitpid(launcher_, nullptr, 0);
  }
  if (!secret_dir_.empty()) std::filesystem::remove_all(secret_dir_);
}

HttpResult LocalCluster::Get(const std::string& path) const {
  httplib::Client client("127.0.0.1", http_port_);
  auto response = client.Get(path.c_str());
  if (!response) return {};
  return {response->status, response->body};
}

HttpResult LocalCluster::Post(const std::string& path, const std::string& body) const {
  httplib::Client client("127.0.0.1", http_port_);
  client.set_read_timeout(300, 0);
  auto response = client.Post(path.c_str(), body, "application/json");
  if (!response) return {};
  return {response->status, response->body};
}

StreamResult LocalCluster::PostStream(const std::string& path, const nlohmann::json& body,
                                      const std::function<bool(const nlohmann::json&)>& on_event) const {
  httplib::Client client("127.0.0.1", http_port_);
  client.set_read_timeout(300, 0);
  StreamResult result;
  std::string pending;
  httplib::Request request;
  request.method = "POST";
  request.path = path;
  request.body = body.dump();
  request.set_header("Content-Type", "application/json");
  request.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    pending.append(data, size);
    size_t end;
    while ((end = pending.find("\n\n")) != std::string::npos) {
      std::string event = pending.substr(0, end);
      pending.erase(0, end + 2);
      if (!absl::StartsWith(event, "data: ")) continue;
      std::string payload = event.substr(6);
      if (payload == "[DONE]") {
        result.done = true;
        continue;
      }
      result.events.push_back(nlohmann::json::parse(payload, nullptr, false));
      if (on_event && !on_event(result.events.back())) return false;
    }
    return true;
  };
  httplib::Response response;
  httplib::Error error;
  client.send(request, response, error);
  result.status = response.status;
  return result;
}

std::vector<pid_t> LocalCluster::WorkerPids() const {
  std::vector<pid_t> workers;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::ifstream stat(entry.path() / "stat"), cmdline(entry.path() / "cmdline");
    std::string pid, comm, state, ppid, command;
    if (!(stat >> pid >> comm >> state >> ppid) || ppid != absl::StrCat(launcher_) || state == "Z") continue;
    std::getline(cmdline, command, '\0');
    // worker/worker in Bazel's runfiles, bin/worker in a device bundle.
    if (std::filesystem::path(command).filename() == "worker") workers.push_back(std::stoi(pid));
  }
  std::sort(workers.begin(), workers.end());
  return workers;
}

bool LocalCluster::SignalWorker(int index, int signal) const {
  const std::vector<pid_t> workers = WorkerPids();
  if (index >= static_cast<int>(workers.size())) return false;
  return kill(workers[index], signal) == 0;
}

bool LocalCluster::SignalWorkerId(int32_t worker_id, int signal) const {
  grpc::ClientContext context;
  v1::ListWorkersResponse response;
  if (!AdminStub()->ListWorkers(&context, v1::ListWorkersRequest(), &response).ok()) return false;
  for (const v1::WorkerStatus& w : response.workers()) {
    if (w.worker_id() == worker_id && w.pid() > 0) return kill(static_cast<pid_t>(w.pid()), signal) == 0;
  }
  return false;
}

absl::Status LocalCluster::StartWorker() {
  ASSIGN_OR_RETURN(const std::string launcher, LauncherPath());
  // The worker binary sits in the launcher's runfiles (worker/worker) or beside it (a bundle's bin/).
  std::string binary = "worker/worker";
  if (!std::filesystem::is_regular_file(binary)) binary = (std::filesystem::path(launcher).parent_path() / "worker").string();
  std::vector<std::string> args = {binary, absl::StrCat("--coordinator=127.0.0.1:", internal_port_),
                                   "--cluster_secret_file=" + secret_dir_ + "/secret"};
  args.insert(args.end(), worker_flags_.begin(), worker_flags_.end());
  auto worker = std::make_unique<ChildProcess>(std::move(args));
  if (!worker->started()) return absl::ErrnoToStatus(errno, "fork");
  extra_workers_.push_back(std::move(worker));
  return absl::OkStatus();
}

int LocalCluster::NumWorkerProcesses() const { return static_cast<int>(WorkerPids().size()); }

std::unique_ptr<v1::Admin::Stub> LocalCluster::AdminStub() const {
  return v1::Admin::NewStub(AuthorizedChannel(absl::StrCat("127.0.0.1:", internal_port_), cluster_secret_));
}

std::unique_ptr<v1::Mlaserve::Stub> LocalCluster::GrpcStub() const {
  return v1::Mlaserve::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_port_), grpc::InsecureChannelCredentials()));
}

double LocalCluster::Metric(const std::string& name, const std::string& labels) const {
  double total = 0;
  for (absl::string_view line : absl::StrSplit(Get("/metrics").body, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    if (!absl::StartsWith(line, name + "{") && !absl::StartsWith(line, name + " ")) continue;
    if (!labels.empty() && !absl::StrContains(line, labels)) continue;
    double value = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &value)) total += value;
  }
  return total;
}

}  // namespace mlaserve
