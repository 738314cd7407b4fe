// The internal gRPC Worker service: loads the model shard and the paged
// latent cache on LoadShard, runs one engine step per Step call (forward pass
// over the batch the coordinator planned, then sampling of the requested rows),
// reports figures on GetStats. Steps are serialized: the coordinator owns the
// schedule and block tables, the worker owns the memory.
#ifndef MLASERVE_WORKER_WORKER_SERVICE_H_
#define MLASERVE_WORKER_WORKER_SERVICE_H_

#include <atomic>
#include <memory>
#include <optional>

#include "absl/synchronization/mutex.h"
#include "kernels/ops.h"
#include "proto/worker.grpc.pb.h"
#include "worker/kv_cache.h"
#include "worker/model.h"

namespace mlaserve {

class WorkerService final : public internal::v1::Worker::Service {
 public:
  explicit WorkerService(std::unique_ptr<Ops> ops);

  grpc::Status LoadShard(grpc::ServerContext* context, const internal::v1::LoadShardRequest* request,
                         internal::v1::LoadShardResponse* response) override;
  grpc::Status Step(grpc::ServerContext* context, const internal::v1::StepRequest* request,
                    internal::v1::StepResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const internal::v1::GetStatsRequest* request,
                        internal::v1::GetStatsResponse* response) override;

 private:
  absl::Status RunStep(const internal::v1::StepRequest& request, internal::v1::StepResponse* response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  std::unique_ptr<Ops> ops_;
  std::unique_ptr<Model> model_ ABSL_GUARDED_BY(mu_);
  std::optional<KvCache> cache_ ABSL_GUARDED_BY(mu_);
  int64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tokens_processed_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_WORKER_SERVICE_H_
