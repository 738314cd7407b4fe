// The internal gRPC Worker service: on LoadShard joins its engine group's
// communicators (through the rendezvous store) and loads its shard of the
// model and the paged latent cache; runs one engine step per Step call (the
// forward pass over its attention replica's part of the batch the coordinator
// planned, then, on the replica's first rank, sampling of the requested rows);
// reports figures on GetStats. Steps are serialized: the coordinator owns the
// schedule and block tables, the worker owns the memory and communicators.
#ifndef MLASERVE_WORKER_WORKER_SERVICE_H_
#define MLASERVE_WORKER_WORKER_SERVICE_H_

#include <atomic>
#include <memory>
#include <optional>

#include "absl/synchronization/mutex.h"
#include "kernels/ops.h"
#include "proto/worker.grpc.pb.h"
#include "worker/comm/rendezvous_store.h"
#include "worker/group_comms.h"
#include "worker/kv_cache.h"
#include "worker/model.h"
#include "worker/peer_links.h"

namespace mlaserve {

class WorkerService final : public internal::v1::Worker::Service {
 public:
  // `store` (not owned) is where sharded groups rendezvous; `factory` makes
  // the communicators matching `ops`' memory.
  // `transfer_chunk_delay` slows each chunk ReadBlocks sends (to exercise
  // failures in the middle of a transfer); zero in production.
  WorkerService(std::unique_ptr<Ops> ops, RendezvousStore& store, CommunicatorFactory factory,
                absl::Duration transfer_chunk_delay = absl::ZeroDuration());

  grpc::Status LoadShard(grpc::ServerContext* context, const internal::v1::LoadShardRequest* request,
                         internal::v1::LoadShardResponse* response) override;
  grpc::Status Step(grpc::ServerContext* context, const internal::v1::StepRequest* request,
                    internal::v1::StepResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const internal::v1::GetStatsRequest* request,
                        internal::v1::GetStatsResponse* response) override;
  grpc::Status ReadBlocks(grpc::ServerContext* context, const internal::v1::ReadBlocksRequest* request,
                          grpc::ServerWriter<internal::v1::BlockChunk>* writer) override;
  grpc::Status PullBlocks(grpc::ServerContext* context, const internal::v1::PullBlocksRequest* request,
                          internal::v1::PullBlocksResponse* response) override;
  grpc::Status SendBlocks(grpc::ServerContext* context, const internal::v1::LinkBlocksRequest* request,
                          internal::v1::LinkBlocksResponse* response) override;
  grpc::Status RecvBlocks(grpc::ServerContext* context, const internal::v1::LinkBlocksRequest* request,
                          internal::v1::LinkBlocksResponse* response) override;

 private:
  absl::Status Load(const internal::v1::LoadShardRequest& request, internal::v1::LoadShardResponse* response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RunStep(const internal::v1::StepRequest& request, internal::v1::StepResponse* response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Samples the next token of every sequence of `mine` that samples, in
  // order, where the logits lie; logits come to the host only when some
  // sequence asks for logprobs.
  absl::Status SampleRows(const std::vector<const internal::v1::StepSequence*>& mine, const Tensor& logits,
                          internal::v1::StepResponse* response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Pull(const internal::v1::PullBlocksRequest& request, int64_t* bytes);
  // SendBlocks (rank 0 of the link) or RecvBlocks (rank 1).
  absl::Status OverLink(const internal::v1::LinkBlocksRequest& request, bool send, int64_t* bytes);
  // Blocks per ReadBlocks message: about 4 MiB of values.
  int64_t BlocksPerChunk() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  std::unique_ptr<Ops> ops_;
  RendezvousStore& store_;
  const CommunicatorFactory factory_;
  const absl::Duration transfer_chunk_delay_;
  PeerLinks links_;
  // Declared before the model, which uses them, so they outlive it.
  GroupComms comms_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Model> model_ ABSL_GUARDED_BY(mu_);
  std::optional<KvCache> cache_ ABSL_GUARDED_BY(mu_);
  int64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tokens_processed_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_WORKER_SERVICE_H_
