#include "coordinator/admin_service.h"

#include "common/grpc_status.h"

namespace mlaserve {

grpc::Status AdminService::DrainWorker(grpc::ServerContext*, const v1::DrainWorkerRequest* request,
                                       v1::DrainWorkerResponse*) {
  return ToGrpcStatus(engine_.DrainWorker(request->worker_id()));
}

}  // namespace mlaserve
