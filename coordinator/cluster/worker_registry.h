// Worker membership: the internal Coordinator gRPC service that workers
// register with and heartbeat to. A worker that misses heartbeats for
// `heartbeat_timeout` is declared dead once and the death callback runs
// (the engine then fails the requests of the worker's group).
#ifndef MLASERVE_COORDINATOR_CLUSTER_WORKER_REGISTRY_H_
#define MLASERVE_COORDINATOR_CLUSTER_WORKER_REGISTRY_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/auth.h"
#include "proto/worker.grpc.pb.h"

namespace mlaserve {

struct WorkerInfo {
  int32_t id = 0;
  std::string address;
  std::string device;
  int64_t memory_bytes = 0;
  std::shared_ptr<internal::v1::Worker::Stub> stub;
  int64_t pid = 0;
  std::string gpu_uuid;  // empty on a CPU
};

class WorkerRegistry final : public internal::v1::Coordinator::Service {
 public:
  // `cluster`: the cluster secret, checked on workers' calls and presented on
  // the coordinator's calls to them.
  explicit WorkerRegistry(absl::Duration heartbeat_timeout, KeySet cluster = {});
  ~WorkerRegistry() override;

  grpc::Status Register(grpc::ServerContext* context, const internal::v1::RegisterRequest* request,
                        internal::v1::RegisterResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const internal::v1::HeartbeatRequest* request,
                         internal::v1::HeartbeatResponse* response) override;
  // Passes the request to the OnDrain callback (FAILED_PRECONDITION without one).
  grpc::Status Drain(grpc::ServerContext* context, const internal::v1::DrainRequest* request,
                     internal::v1::DrainResponse* response) override;

  // Blocks until `count` workers have registered (the first `count`, by id).
  absl::StatusOr<std::vector<WorkerInfo>> WaitForWorkers(int count, absl::Duration timeout);
  // Runs on the monitor thread when a worker is declared dead.
  void OnDeath(std::function<void(int32_t worker_id)> callback);
  // Declares a worker dead now (a failed RPC proved it); idempotent.
  void MarkDead(int32_t worker_id);
  // Handles workers' drain requests (SIGTERM).
  void OnDrain(std::function<absl::Status(int32_t worker_id)> callback);
  // Lets a drained worker go: it is no longer live, its next heartbeat is
  // told so (and it exits), and no death is reported.
  void Retire(int32_t worker_id);
  int32_t num_live() const;
  // Whether `worker_id` is registered and not declared dead or retired.
  bool IsLive(int32_t worker_id) const;
  // Every registered worker with whether it is live, by id.
  std::vector<std::pair<WorkerInfo, bool>> List() const;
  int32_t num_registered() const;

 private:
  struct Entry {
    WorkerInfo info;
    absl::Time last_seen;
    bool alive = true;
    bool retired = false;  // let go after a drain (not alive either)
    uint64_t incarnation = 0;  // RegisterResponse's
  };
  void Monitor();

  const absl::Duration heartbeat_timeout_;
  const KeySet callers_;
  mutable absl::Mutex mu_;
  std::map<int32_t, Entry> workers_ ABSL_GUARDED_BY(mu_);
  std::function<void(int32_t)> on_death_ ABSL_GUARDED_BY(mu_);
  std::function<absl::Status(int32_t)> on_drain_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::BitGen incarnations_ ABSL_GUARDED_BY(mu_);
  std::thread monitor_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_CLUSTER_WORKER_REGISTRY_H_
