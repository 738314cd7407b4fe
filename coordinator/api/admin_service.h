// The public Admin gRPC service (proto/mlaserve.proto): operator actions on
// the serving engine, such as draining a worker before taking it down.
#ifndef MLASERVE_COORDINATOR_API_ADMIN_SERVICE_H_
#define MLASERVE_COORDINATOR_API_ADMIN_SERVICE_H_

#include "common/auth.h"
#include "coordinator/serving/serving_engine.h"
#include "coordinator/cluster/worker_registry.h"
#include "proto/mlaserve.grpc.pb.h"

namespace mlaserve {

class AdminService final : public v1::Admin::Service {
 public:
  // `callers`: the operators' keys (the admin keys, or the cluster secret).
  AdminService(ServingEngine& engine, const WorkerRegistry& registry, KeySet callers = {})
      : engine_(engine), registry_(registry), callers_(std::move(callers)) {}

  grpc::Status DrainWorker(grpc::ServerContext* context, const v1::DrainWorkerRequest* request,
                           v1::DrainWorkerResponse* response) override;
  grpc::Status ListWorkers(grpc::ServerContext* context, const v1::ListWorkersRequest* request,
                           v1::ListWorkersResponse* response) override;

 private:
  ServingEngine& engine_;
  const WorkerRegistry& registry_;
  const KeySet callers_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_API_ADMIN_SERVICE_H_
