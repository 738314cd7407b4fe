// The public gRPC API (mlaserve.v1.Mlaserve) over the Engine: Generate
// streams updates as they come; a client that goes away cancels its request.
#ifndef MLASERVE_COORDINATOR_API_GRPC_SERVICE_H_
#define MLASERVE_COORDINATOR_API_GRPC_SERVICE_H_

#include "common/auth.h"
#include "coordinator/serving/engine.h"
#include "coordinator/serving/metrics.h"
#include "proto/mlaserve.grpc.pb.h"

namespace mlaserve {

class GrpcService final : public v1::Mlaserve::Service {
 public:
  // `callers`: the client API keys (Health answers everyone, as /health does).
  GrpcService(Engine& engine, ServingMetrics& metrics, int64_t block_size, KeySet callers = {})
      : engine_(engine), metrics_(metrics), block_size_(block_size), callers_(std::move(callers)) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status Health(grpc::ServerContext* context, const v1::HealthRequest* request,
                      v1::HealthResponse* response) override;
  grpc::Status ModelInfo(grpc::ServerContext* context, const v1::ModelInfoRequest* request,
                         v1::ModelInfoResponse* response) override;

 private:
  // InvalidArgument for sampling values out of range.
  absl::StatusOr<GenerateInput> ToInput(const v1::GenerateRequest& request) const;

  Engine& engine_;
  ServingMetrics& metrics_;
  const int64_t block_size_;
  const KeySet callers_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_API_GRPC_SERVICE_H_
