#include "tests/local_cluster.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace mlaserve {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(const std::string& model_dir, int workers,
                                                                  const std::vector<std::string>& coordinator_flags,
                                                                  const std::vector<std::string>& worker_flags) {
  auto cluster = std::unique_ptr<LocalCluster>(new LocalCluster());
  cluster->http_port_ = FreePort();
  cluster->grpc_port_ = FreePort();
  std::vector<std::string> args = {"deploy/serve",
                                   "--model=" + std::filesystem::absolute(model_dir).string(),
                                   absl::StrCat("--http_port=", cluster->http_port_),
                                   absl::StrCat("--grpc_port=", cluster->grpc_port_),
                                   absl::StrCat("--workers=", workers),
                                   "--worker_flags=" + absl::StrJoin(worker_flags, " "),
                                   "--"};
  args.insert(args.end(), coordinator_flags.begin(), coordinator_flags.end());
  cluster->launcher_ = fork();
  if (cluster->launcher_ == 0) {
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (absl::Now() < deadline) {
    if (cluster->Get("/health").status == 200) return cluster;
    if (waitpid(cluster->launcher_, nullptr, WNOHANG) == cluster->launcher_) {
      cluster->launcher_ = -1;
      return absl::InternalError("the cluster exited during start-up");
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError("the cluster did not become healthy within 120 s");
}

LocalCluster::~LocalCluster() {
  if (launcher_ <= 0) return;
  kill(launcher_, SIGTERM);
  waitpid(launcher_, nullptr, 0);
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
    if (absl::EndsWith(command, "worker/worker")) workers.push_back(std::stoi(pid));
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

int LocalCluster::NumWorkerProcesses() const { return static_cast<int>(WorkerPids().size()); }

std::unique_ptr<v1::Admin::Stub> LocalCluster::AdminStub() const {
  return v1::Admin::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_port_), grpc::InsecureChannelCredentials()));
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
