// The internal gRPC Worker service: on LoadShard joins its engine group's
// communicators (through the rendezvous store), loads its shard of the model
// and, on a GPU, reports the memory it then holds (worker/memory_profile.h);
// on CreateCache allocates the paged latent cache the coordinator sized; runs the engine steps that arrive on its
// Steps stream one after the other (the forward pass over its attention
// replica's part of the batch the coordinator planned, then sampling of the
// requested rows, reported by the replica's first rank); reports figures on
// GetStats. The coordinator owns the schedule and block tables; the worker
// keeps a copy of each of its sequences' tables (a step carries only their
// changes) and the token it last sampled for each, which a later step may
// take as input before the coordinator has seen it.
#ifndef MLASERVE_WORKER_WORKER_SERVICE_H_
#define MLASERVE_WORKER_WORKER_SERVICE_H_

#include <atomic>
#include <memory>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "kernels/ops.h"
#include "kernels/sampler.h"
#include "common/auth.h"
#include "proto/worker.grpc.pb.h"
#include "worker/comm/rendezvous_store.h"
#include "worker/group_comms.h"
#include "worker/kv_cache.h"
#include "worker/memory_profile.h"
#include "worker/model.h"
#include "worker/peer_links.h"

namespace mlaserve {

struct WorkerOptions {
  // Slows each chunk ReadBlocks sends, and a link's send of blocks (to
  // exercise failures in the middle of a transfer); zero in production.
  absl::Duration transfer_chunk_delay = absl::ZeroDuration();
  // Answers steps without computing (no weights, no cache memory; sampled
  // tokens are a function of the request id and sample index): measures the
  // serving path's own cost. Benchmarks only.
  bool mock_compute = false;
  // With mock_compute, each step takes this long, as a GPU's would: clients
  // then keep as many sequences in the batch as they would against a GPU.
  absl::Duration mock_step_time = absl::ZeroDuration();
  // The GPU's memory (absent on a CPU, where nothing is measured): read when
  // the service is made and again around loading, for LoadShard's memory
  // report (worker/memory_profile.h).
  std::optional<GpuMemory> gpu_memory;
  // The cluster secret: every call must carry it, and calls to peers
  // (PullBlocks reading a peer's blocks) present it. Empty: open.
  KeySet cluster_secret;
  // Which form of MLA each sequence's attention takes (worker/attention_form.h):
  // the cheapest; one form for all only to measure against it.
  AttentionForm attention_form = AttentionForm::kCheapest;
};

class WorkerService final : public internal::v1::Worker::Service {
 public:
  // `store` (not owned) is where sharded groups rendezvous; `factory` makes
  // the communicators matching `ops`' memory.
  WorkerService(std::unique_ptr<Ops> ops, RendezvousStore& store, CommunicatorFactory factory,
                WorkerOptions options = {});

  grpc::Status LoadShard(grpc::ServerContext* context, const internal::v1::LoadShardRequest* request,
                         internal::v1::LoadShardResponse* response) override;
  grpc::Status CreateCache(grpc::ServerContext* context, const internal::v1::CreateCacheRequest* request,
                           internal::v1::CreateCacheResponse* response) override;
  grpc::Status Steps(grpc::ServerContext* context,
                     grpc::ServerReaderWriter<internal::v1::StepResponse, internal::v1::StepRequest>* stream) override;
  // One message of a Steps stream: checks the request and runs its step
  // (Steps calls it for each, in order). InvalidArgument for a request that
  // does not fit the worker's sequences or cache, which then change nothing.
  absl::Status Step(const internal::v1::StepRequest& request, internal::v1::StepResponse* response)
      ABSL_LOCKS_EXCLUDED(mu_);
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
  // Which shard a model holds: a LoadShard asking for the one loaded keeps
  // its weights.
  struct ShardIdentity {
    std::string model_dir;
    ParallelPlan plan;
    int group_rank = 0;
    WeightsDtype dtype = WeightsDtype::kAuto;
    bool random_weights = false;
    uint64_t random_seed = 0;
    bool operator==(const ShardIdentity&) const = default;
  };
  // Runs the request's largest step on the freshly loaded `model` and fills
  // `report` from the free memory before the weights, after them and now.
  absl::Status MeasureMemory(Model& model, const internal::v1::LoadShardRequest& request, int64_t free_before_weights,
                             internal::v1::MemoryReport* report) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CreatePool(const internal::v1::CreateCacheRequest& request,
                          internal::v1::CreateCacheResponse* response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What the worker keeps of one of its replica's sequences between steps.
  struct SequenceState {
    std::vector<int32_t> block_table;
    int64_t context_len = 0;
    SamplerParams sampling;
    bool logprobs = false;
    int32_t top_logprobs = 0;
    int32_t last_sample = -1;  // none yet
  };
  // A sequence's row of this step, once its change is applied.
  struct StepRow {
    SequenceState* state = nullptr;
    bool sample = false;
    int64_t sample_index = 0;
  };
  absl::Status RunStep(const internal::v1::StepRequest& request, internal::v1::StepResponse* response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK when `s`'s change fits the worker's copy of its sequence (a fresh one
  // when it starts; none when it is in `released`) and the cache, else
  // InvalidArgument naming what does not (unknown sequence, block outside
  // the pool, token outside the vocabulary, context_len that does not follow,
  // context beyond the table). Changes nothing.
  absl::Status CheckChange(const internal::v1::StepSequence& s, const absl::flat_hash_set<int64_t>& released) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK when the step's context-parallel chunks each give every replica a
  // non-empty slice or more, the home replica's last, and have in the step
  // the sequence in its home replica and a copy in each other, carrying the
  // chunk's tokens, with only the home sequence sampling; else
  // InvalidArgument. Fills `chunks` with the index of the chunk of each of
  // those sequences' ids.
  absl::Status CheckChunks(const internal::v1::StepRequest& request, absl::flat_hash_map<int64_t, int>* chunks) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies `s`'s change to the worker's copy of its sequence and adds its
  // tokens to `batch`: all of them, or only this replica's slices of `chunk`,
  // described in `split` (the whole chunk's KV is written,
  // ForwardBatch::context_splits).
  // REQUIRES: CheckChange(s) is OK, and no change of this step was applied
  // to the same sequence before; `chunk` passed CheckChunks, and `split` is
  // empty and given with it.
  StepRow ApplyChange(const internal::v1::StepSequence& s, const internal::v1::ContextParallelChunk* chunk,
                      ContextSplit* split, ForwardBatch* batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Samples the next token of every row that samples, in order, where the
  // logits lie, and keeps it as the row's last sample; the replica's first
  // rank reports them. Logits come to the host only when some row asks for
  // logprobs.
  absl::Status SampleRows(const std::vector<StepRow>& rows, const Tensor& logits, bool report,
                          internal::v1::StepResponse* response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Mock compute: SampleRows' tokens without a model.
  void MockSampleRows(const std::vector<int64_t>& ids, const std::vector<StepRow>& rows, bool report,
                      internal::v1::StepResponse* response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Pull(const internal::v1::PullBlocksRequest& request, int64_t* bytes);
  // SendBlocks (rank 0 of the link) or RecvBlocks (rank 1).
  absl::Status OverLink(const internal::v1::LinkBlocksRequest& request, bool send, int64_t* bytes);
  // How many head shards hold a replica's blocks between them (tp with
  // decode context parallelism, else 1): the coordinator's block ids run to
  // num_blocks_ times it.
  int KvShards() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The pool indexes of coordinator block ids that this rank holds, or
  // FailedPrecondition naming one another head shard holds (a transfer of a
  // sequence whose blocks are spread fails, and its KV is recomputed).
  absl::StatusOr<std::vector<int32_t>> PoolBlocks(absl::Span<const int32_t> blocks) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Blocks per ReadBlocks message: about 4 MiB of the pool's bytes.
  int64_t BlocksPerChunk() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  std::unique_ptr<Ops> ops_;
  RendezvousStore& store_;
  const CommunicatorFactory factory_;
  const WorkerOptions options_;
  PeerLinks links_;
  // Declared before the model, which uses them, so they outlive it.
  GroupComms comms_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Model> model_ ABSL_GUARDED_BY(mu_);
  std::optional<KvCache> cache_ ABSL_GUARDED_BY(mu_);
  // The pool's geometry (also set under mock compute, which has no pool);
  // num_blocks_ is 0 until CreateCache.
  int64_t num_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t block_size_ ABSL_GUARDED_BY(mu_) = 0;
  KvCacheDtype kv_dtype_ ABSL_GUARDED_BY(mu_) = KvCacheDtype::kStorage;
  bool decode_context_parallel_ ABSL_GUARDED_BY(mu_) = false;
  int64_t bytes_per_block_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t vocab_size_ ABSL_GUARDED_BY(mu_) = 0;
  bool loaded_ ABSL_GUARDED_BY(mu_) = false;  // LoadShard succeeded
  // The shard the last successful LoadShard loaded and what its weights
  // take on the GPU (0 on a CPU).
  ShardIdentity loaded_shard_ ABSL_GUARDED_BY(mu_);
  int64_t weight_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // The GPU's free memory when the worker started (0 on a CPU).
  const absl::StatusOr<int64_t> start_free_bytes_;
  // Node-based: a step holds pointers to states while it adds others.
  absl::node_hash_map<int64_t, SequenceState> sequences_ ABSL_GUARDED_BY(mu_);
  int64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tokens_processed_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_WORKER_SERVICE_H_
