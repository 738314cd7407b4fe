#include "coordinator/cluster/worker_registry.h"

#include <iostream>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/grpc_keepalive.h"
#include "common/grpc_status.h"

namespace mlaserve {

WorkerRegistry::WorkerRegistry(absl::Duration heartbeat_timeout, KeySet cluster)
    : heartbeat_timeout_(heartbeat_timeout), callers_(std::move(cluster)), monitor_([this] { Monitor(); }) {}

WorkerRegistry::~WorkerRegistry() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  monitor_.join();
}

grpc::Status WorkerRegistry::Register(grpc::ServerContext* context, const internal::v1::RegisterRequest* request,
                                      internal::v1::RegisterResponse* response) {
  if (grpc::Status denied = CheckCaller(callers_, *context); !denied.ok()) return denied;
  if (request->address().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "address is required");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(256 << 20);
  // A connection of its own (gRPC would share one with an earlier
  // registration from the same address, stale after a partition), pinged
  // every 2 s so that a connection whose packets vanish is dropped in seconds
  // rather than after TCP's retransmissions.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  PingAcrossPartitions(&args);
  auto channel = AuthorizedChannel(request->address(), callers_.presented(), args);
  absl::MutexLock lock(&mu_);
  const int32_t id = workers_.empty() ? 0 : workers_.rbegin()->first + 1;
  Entry& entry = workers_[id];
  entry.info = {id, request->address(), request->device(), request->memory_bytes(),
                std::shared_ptr<internal::v1::Worker::Stub>(internal::v1::Worker::NewStub(channel)), request->pid(),
                request->gpu_uuid()};
  entry.last_seen = absl::Now();
  entry.incarnation = absl::Uniform<uint64_t>(incarnations_);
  response->set_worker_id(id);
  response->set_incarnation(entry.incarnation);
  std::cerr << "coordinator: worker " << id << " registered at " << request->address() << "\n";
  return grpc::Status::OK;
}

grpc::Status WorkerRegistry::Heartbeat(grpc::ServerContext* context, const internal::v1::HeartbeatRequest* request,
                                       internal::v1::HeartbeatResponse* response) {
  if (grpc::Status denied = CheckCaller(callers_, *context); !denied.ok()) return denied;
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(request->worker_id());
  const bool same = it != workers_.end() && it->second.incarnation == request->incarnation();
  const bool known = same && it->second.alive;
  if (known) it->second.last_seen = absl::Now();
  response->set_known(known);
  response->set_retired(same && it->second.retired);
  return grpc::Status::OK;
}

absl::StatusOr<std::vector<WorkerInfo>> WorkerRegistry::WaitForWorkers(int count, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto enough = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return static_cast<int>(workers_.size()) >= count; };
  if (!mu_.AwaitWithTimeout(absl::Condition(&enough), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat("only ", workers_.size(), " of ", count,
                                                    " workers registered within ", absl::FormatDuration(timeout)));
  }
  std::vector<WorkerInfo> out;
  for (const auto& [id, entry] : workers_) {
    if (static_cast<int>(out.size()) == count) break;
    out.push_back(entry.info);
  }
  return out;
}

void WorkerRegistry::OnDeath(std::function<void(int32_t)> callback) {
  absl::MutexLock lock(&mu_);
  on_death_ = std::move(callback);
}

void WorkerRegistry::OnDrain(std::function<absl::Status(int32_t)> callback) {
  absl::MutexLock lock(&mu_);
  on_drain_ = std::move(callback);
}

grpc::Status WorkerRegistry::Drain(grpc::ServerContext* context, const internal::v1::DrainRequest* request,
                                   internal::v1::DrainResponse*) {
  if (grpc::Status denied = CheckCaller(callers_, *context); !denied.ok()) return denied;
  std::function<absl::Status(int32_t)> callback;
  {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(request->worker_id());
    if (it == workers_.end() || it->second.incarnation != request->incarnation()) {
      return ToGrpcStatus(absl::NotFoundError(absl::StrCat("this coordinator did not register worker ",
                                                           request->worker_id(), " as the caller")));
    }
    callback = on_drain_;
  }
  if (!callback) return ToGrpcStatus(absl::FailedPreconditionError("this coordinator cannot drain workers now"));
  return ToGrpcStatus(callback(request->worker_id()));
}

void WorkerRegistry::Retire(int32_t worker_id) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it != workers_.end()) {
    it->second.alive = false;
    it->second.retired = true;
  }
  std::cerr << "coordinator: worker " << worker_id << " retired\n";
}

void WorkerRegistry::MarkDead(int32_t worker_id) {
  std::function<void(int32_t)> callback;
  {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(worker_id);
    if (it == workers_.end() || !it->second.alive) return;
    it->second.alive = false;
    callback = on_death_;
  }
  std::cerr << "coordinator: worker " << worker_id << " is dead\n";
  if (callback) callback(worker_id);
}

void WorkerRegistry::Monitor() {
  while (true) {
    std::vector<int32_t> expired;
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Milliseconds(200))) return;
      for (const auto& [id, entry] : workers_) {
        if (entry.alive && absl::Now() - entry.last_seen > heartbeat_timeout_) expired.push_back(id);
      }
    }
    for (int32_t id : expired) MarkDead(id);
  }
}

int32_t WorkerRegistry::num_live() const {
  absl::MutexLock lock(&mu_);
  int32_t n = 0;
  for (const auto& [id, entry] : workers_) n += entry.alive;
  return n;
}

bool WorkerRegistry::IsLive(int32_t worker_id) const {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  return it != workers_.end() && it->second.alive;
}

std::vector<std::pair<WorkerInfo, bool>> WorkerRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::pair<WorkerInfo, bool>> out;
  for (const auto& [id, entry] : workers_) out.emplace_back(entry.info, entry.alive);
  return out;
}

int32_t WorkerRegistry::num_registered() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int32_t>(workers_.size());
}

}  // namespace mlaserve
