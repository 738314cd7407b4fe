// The public Admin gRPC service (proto/mlaserve.proto): operator actions on
// the serving engine, such as draining a worker before taking it down.
#ifndef MLASERVE_COORDINATOR_ADMIN_SERVICE_H_
#define MLASERVE_COORDINATOR_ADMIN_SERVICE_H_

#include "coordinator/serving_engine.h"
#include "proto/mlaserve.grpc.pb.h"

namespace mlaserve {

class AdminService final : public v1::Admin::Service {
 public:
  explicit AdminService(ServingEngine& engine) : engine_(engine) {}

  grpc::Status DrainWorker(grpc::ServerContext* context, const v1::DrainWorkerRequest* request,
                           v1::DrainWorkerResponse* response) override;

 private:
  ServingEngine& engine_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_ADMIN_SERVICE_H_
