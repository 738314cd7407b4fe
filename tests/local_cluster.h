// Test harness: a real local cluster (the //deploy:serve launcher, which
// starts a coordinator and worker processes) on free loopback ports, with a
// cluster secret of its own, plus small HTTP and gRPC client helpers. The
// cluster is stopped (SIGTERM) and its secret removed on destruction.
#ifndef MLASERVE_TESTS_LOCAL_CLUSTER_H_
#define MLASERVE_TESTS_LOCAL_CLUSTER_H_

#include <signal.h>
#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "proto/mlaserve.grpc.pb.h"

namespace mlaserve {

struct HttpResult {
  int status = 0;
  std::string body;
  nlohmann::json json() const { return nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false); }
};

struct StreamResult {
  int status = 0;
  std::vector<nlohmann::json> events;  // parsed `data:` payloads before [DONE]
  bool done = false;                   // saw data: [DONE]
};

// The device the tests' workers run on: $MLASERVE_TEST_DEVICE (cpu, cuda or
// cuda:N), "cpu" when unset.
std::string TestDevice();

class LauncherLog;  // what the cluster's processes print (local_cluster.cc)

// A process started from `args` (args[0] the binary), interrupted (SIGINT)
// and reaped when it goes out of scope.
class ChildProcess {
 public:
  explicit ChildProcess(std::vector<std::string> args);
  ~ChildProcess() { Stop(SIGINT); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  // Sends `signal` and waits for the process to end; nothing once it has.
  void Stop(int signal);
  // Sends `signal`. REQUIRES: not stopped.
  void Signal(int signal);
  // Waits for the process to end: its exit code, or 128 + the signal that
  // ended it. REQUIRES: not stopped.
  int Wait();
  bool started() const { return pid_ > 0; }

 private:
  pid_t pid_ = -1;
};

class LocalCluster {
 public:
  // Starts `workers` workers serving `model_dir`; extra flags go to the
  // coordinator, `worker_flags` to every worker. Workers run on TestDevice()
  // unless `worker_flags` name a --device. Fails fast, with the cluster's last
  // log lines, if the launcher or a worker exits before the cluster is healthy.
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(const std::string& model_dir, int workers,
                                                             const std::vector<std::string>& coordinator_flags = {},
                                                             const std::vector<std::string>& worker_flags = {});
  ~LocalCluster();

  int http_port() const { return http_port_; }
  int grpc_port() const { return grpc_port_; }
  // The coordinator's internal port (registration, rendezvous, Admin).
  int internal_port() const { return internal_port_; }
  // The secret the cluster's processes share (internal calls carry it).
  const std::string& cluster_secret() const { return cluster_secret_; }

  HttpResult Get(const std::string& path) const;
  HttpResult Post(const std::string& path, const std::string& body) const;
  // POSTs a streaming request; `on_event` may return false to hang up early.
  StreamResult PostStream(const std::string& path, const nlohmann::json& body,
                          const std::function<bool(const nlohmann::json&)>& on_event = nullptr) const;
  std::unique_ptr<v1::Mlaserve::Stub> GrpcStub() const;
  // Admin on the internal port, presenting the cluster secret.
  std::unique_ptr<v1::Admin::Stub> AdminStub() const;
  // SIGKILLs the launcher's `index`-th worker process; false if there is none.
  bool KillWorker(int index) const { return SignalWorker(index, SIGKILL); }
  // Sends `signal` to the launcher's `index`-th live worker process.
  bool SignalWorker(int index, int signal) const;
  // Sends `signal` to the worker process the coordinator knows as `worker_id`.
  bool SignalWorkerId(int32_t worker_id, int signal) const;
  int NumWorkerProcesses() const;
  // Starts one more worker process (a replacement) with the cluster's worker
  // flags, registering with its coordinator; stopped with the cluster.
  absl::Status StartWorker();
  // The value of a metric line in /metrics (sum over label sets matching `labels`).
  double Metric(const std::string& name, const std::string& labels = "") const;

 private:
  LocalCluster() = default;
  // Forks the launcher with `args`, its stderr (and its children's) piped to `log_`.
  absl::Status Launch(std::vector<std::string> args);
  absl::Status AwaitHealthy(absl::Duration timeout);
  std::vector<pid_t> WorkerPids() const;
  std::shared_ptr<LauncherLog> log_;
  pid_t launcher_ = -1;
  int http_port_ = 0;
  int grpc_port_ = 0;
  int internal_port_ = 0;
  std::string secret_dir_;
  std::vector<std::string> worker_flags_;
  std::vector<std::unique_ptr<ChildProcess>> extra_workers_;
  std::string cluster_secret_;
};

// A loopback port no one listens on right now, outside the range the kernel
// gives sockets bound to port 0 (the workers'), so that none takes it later.
int FreePort();

}  // namespace mlaserve

#endif  // MLASERVE_TESTS_LOCAL_CLUSTER_H_
