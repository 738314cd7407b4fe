#include "coordinator/api/admin_service.h"

#include "common/grpc_status.h"

namespace mlaserve {

grpc::Status AdminService::DrainWorker(grpc::ServerContext* context, const v1::DrainWorkerRequest* request,
                                       v1::DrainWorkerResponse*) {
  if (grpc::Status denied = CheckCaller(callers_, *context); !denied.ok()) return denied;
  return ToGrpcStatus(engine_.DrainWorker(request->worker_id()));
}

grpc::Status AdminService::ListWorkers(grpc::ServerContext* context, const v1::ListWorkersRequest*,
                                       v1::ListWorkersResponse* response) {
  if (grpc::Status denied = CheckCaller(callers_, *context); !denied.ok()) return denied;
  for (const auto& [info, live] : registry_.List()) {
    v1::WorkerStatus* w = response->add_workers();
    w->set_worker_id(info.id);
    w->set_address(info.address);
    w->set_device(info.device);
    w->set_pid(info.pid);
    w->set_live(live);
  }
  return grpc::Status::OK;
}

}  // namespace mlaserve
