// The DeepSeek-V2/V3 forward pass (MLA attention over the paged latent cache,
// dense and MoE feed-forward), written once against the Ops interface.
// The model owns its weights; the caller owns the cache, the batch layout and
// the communicators. A rank of a sharded engine group holds one shard
// (common/shard_layout.h) and meets its peers at the same points of every
// step: after attention, the dense MLP and the MoE (head and inner-dimension
// partial sums), around the routed experts (expert dispatch), at the
// embedding and the LM head (vocabulary slices).
#ifndef MLASERVE_WORKER_MODEL_H_
#define MLASERVE_WORKER_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/shard_layout.h"
#include "kernels/ops.h"
#include "kernels/rope_table.h"
#include "worker/attention_form.h"
#include "worker/comm/communicator.h"
#include "worker/expert_dispatch.h"
#include "worker/kv_cache.h"
#include "worker/model_weights.h"

namespace mlaserve {

// A prompt chunk computed by every attention replica of the group at once
// (context parallelism): the chunk is cut into consecutive pieces, each
// replica computes the queries of its pieces (one or more: a causal chunk's
// later pieces attend to more keys, so pairing early with late pieces
// balances the replicas), and every replica writes the whole chunk's latent
// KV into its own copy of the sequence, so that each piece attends to
// everything before it and the copy of the replica that goes on decoding
// holds the whole prompt.
struct ContextSplit {
  std::vector<int64_t> seqs;          // this rank's pieces, in chunk order: layout.seqs[seqs[k]]
  std::vector<int> owners;            // the replica computing each piece, in chunk order
  std::vector<int64_t> piece_tokens;  // each piece's tokens, in chunk order
};

// One step: new tokens of several sequences, concatenated in layout order.
struct ForwardBatch {
  std::vector<int32_t> token_ids;
  AttentionLayout layout;
  std::vector<int64_t> logit_rows;  // batch rows whose logits are wanted
  // Chunks split over the replicas, in the same order on every rank.
  // REQUIRES: every replica of the group runs the step with the same splits.
  std::vector<ContextSplit> context_splits;
};

// Where a rank sits in its group and whom it talks to (not owned; null when
// that set of ranks is this rank alone).
struct ModelShard {
  ParallelPlan plan;
  int group_rank = 0;
  Communicator* group = nullptr;      // every rank of the engine group: expert dispatch
  Communicator* attention = nullptr;  // the head shards of this rank's attention replica
  // This rank's head shard in every attention replica, ranked by replica:
  // context-parallel chunks share their latent KV through it.
  Communicator* context = nullptr;
};

class Model {
 public:
  // Loads the checkpoint in `dir` (config.json plus safetensors) onto `ops`:
  // the whole model, or the part `shard` holds.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir, Ops& ops,
                                                     const LoadProgress& progress = nullptr);
  // `dtype` says which projections stay or become FP8 (WeightsDtype).
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir, Ops& ops, const ModelShard& shard,
                                                     WeightsDtype dtype = WeightsDtype::kAuto,
                                                     const LoadProgress& progress = nullptr);
  // The model of `dir`/config.json with random weights made on `ops`
  // (RandomModelWeights): real shapes without a checkpoint.
  static absl::StatusOr<std::unique_ptr<Model>> LoadRandom(const std::string& dir, Ops& ops, const ModelShard& shard,
                                                           uint64_t seed, WeightsDtype dtype = WeightsDtype::kAuto);

  // `model`'s weights, moved into a model for the group this rank has joined
  // again, talking through `shard`'s communicators: the old ones may be gone.
  // Steps recorded for `model` are never replayed for the result.
  // REQUIRES: `shard` places this rank as `model`'s did (plan and rank).
  static absl::StatusOr<std::unique_ptr<Model>> Rejoin(std::unique_ptr<Model> model, const ModelShard& shard);

  // Runs the batch, writing its latent KV into `cache`, and returns the logits
  // of `batch.logit_rows` where they were computed, in Ops::SampleTokens'
  // layout [tp, rows, vocab slice] (vocabulary slices of the head shards).
  // With data-parallel attention a rank whose replica has no tokens this
  // step still calls it with an empty batch: it takes part in the expert
  // dispatch and returns no rows.
  absl::StatusOr<Tensor> ForwardLogits(const ForwardBatch& batch, KvCache& cache,
                                       AttentionForm form = AttentionForm::kCheapest);
  // ForwardLogits' result as float32 [rows, vocab] on the host.
  absl::StatusOr<std::vector<float>> LogitsToHost(const Tensor& logits);
  // ForwardLogits then LogitsToHost.
  absl::StatusOr<std::vector<float>> Forward(const ForwardBatch& batch, KvCache& cache,
                                             AttentionForm form = AttentionForm::kCheapest);

  const ModelConfig& config() const { return config_; }
  // The most bytes the expanded form's scratch takes in a step (latent rows
  // of a context, K and V of a group of heads): workers reserve it beside
  // the largest step's activations.
  int64_t expanded_scratch_bytes() const { return expanded_scratch_bytes_; }
  // REQUIRES: bytes > 0; called before the steps it should govern.
  void set_expanded_scratch_bytes(int64_t bytes) { expanded_scratch_bytes_ = bytes; }
  // Decode context parallelism: the replica's head shards hold its
  // sequences' KV blocks between them (each rank's block tables name the
  // others' blocks kBlockElsewhere; worker/kv_shards.h), so a replica holds
  // tp times the tokens. Every token then takes the absorbed form: each rank
  // attends every head shard's queries over its own blocks, and each shard
  // combines the parts of its heads. InvalidArgument without attention TP;
  // called before the steps it should govern.
  absl::Status set_decode_context_parallel(bool on);

 private:
  Model(const ModelConfig& config, ModelWeights weights, RopeTable rope, Ops& ops, const ShardLayout& layout,
        const ModelShard& shard);
  // Loads `weights_from` the checkpoint or random source, after checking the
  // shard against the config.
  using WeightSource = std::function<absl::StatusOr<ModelWeights>(const ModelConfig&, const ShardLayout&)>;
  static absl::StatusOr<std::unique_ptr<Model>> Create(const std::string& dir, Ops& ops, const ModelShard& shard,
                                                       const WeightSource& weights_from);

  // A context-parallel chunk as this rank exchanges its latent KV, the same
  // in every layer: each replica sends `width` rows (the most any replica
  // owns), and the gathered [replicas * width] rows hold the other replicas'
  // pieces at `recv_rows`, to be written at `recv_slots` of this rank's copy.
  struct ChunkExchange {
    int64_t width = 0;
    std::vector<int32_t> send_rows;  // this rank's rows of the step, padded with its last
    std::vector<int32_t> recv_rows;
    std::vector<int64_t> recv_slots;
  };
  // The step's per-token arrays, made once and read by every layer (and
  // handed to the backend as StepInputs).
  struct StepArrays {
    std::vector<int32_t> local_ids;  // ids in this rank's vocabulary slice (the zero row when outside)
    std::vector<int32_t> positions;
    std::vector<int64_t> slots;
    std::vector<int32_t> logit_rows;
    std::vector<ChunkExchange> exchanges;  // one per batch.context_splits
    // Sequences whose attention takes the expanded form, by block table:
    // slices of one sequence (a context-parallel chunk's pieces) expand its
    // K and V once, over the longest slice's keys, `group_heads` heads at a
    // time, and each attends to its prefix of them. The others take the
    // absorbed form over the step's rows [absorbed_begin, absorbed_begin +
    // absorbed_rows), which they span: with expanded ones, as `absorbed`
    // lays them out from absorbed_begin (a long chunk is not absorbed too).
    struct ExpandedKeys {
      std::vector<size_t> slices;  // indexes in batch.layout.seqs, in batch order
      int64_t keys = 0;
      int64_t group_heads = 0;
    };
    std::vector<ExpandedKeys> expanded;
    AttentionLayout absorbed;
    int64_t absorbed_begin = 0;
    int64_t absorbed_rows = 0;
    const AttentionLayout& AbsorbedLayout(const ForwardBatch& batch) const {
      return expanded.empty() ? batch.layout : absorbed;
    }
  };
  absl::StatusOr<StepArrays> MakeStepArrays(const ForwardBatch& batch, AttentionForm form) const;
  // The exchange of `split`, or InvalidArgument when it is not a chunk this
  // rank can take part in.
  absl::StatusOr<ChunkExchange> PlanExchange(const ContextSplit& split, const AttentionLayout& layout) const;
  // Whether the backend may record and replay the step (Ops::RunStep).
  bool Replayable(const ForwardBatch& batch, const StepArrays& step) const;
  absl::StatusOr<Tensor> RunLayers(const ForwardBatch& batch, const StepArrays& step, KvCache& cache);
  absl::StatusOr<Tensor> Attention(const LayerWeights& w, int64_t layer, const Tensor& x, const ForwardBatch& batch,
                                   const StepArrays& step, KvCache& cache);
  // Writes the latent KV of the other replicas' pieces of a chunk into this
  // rank's copy of the sequence (`c_kv` and `k_rope` hold this step's rows).
  absl::Status ShareChunkLatent(const ChunkExchange& exchange, const Tensor& c_kv, const Tensor& k_rope,
                                int64_t layer, KvCache& cache);
  absl::Status AbsorbedAttention(const LayerWeights& w, int64_t layer, const Tensor& q_nope, const Tensor& q_rope,
                                 const AttentionLayout& layout, KvCache& cache, Tensor* out);
  // Decode context parallelism's absorbed attention of this rank's heads
  // (q_latent, q_rope) into o_latent: every head shard's queries over this
  // rank's blocks, then the parts of this rank's heads combined.
  absl::Status ShardedContextAttention(const Tensor& q_latent, const Tensor& q_rope, int64_t layer,
                                       const AttentionLayout& layout, KvCache& cache, Tensor* o_latent);
  // The attention of the slices of one sequence in the expanded form.
  absl::Status ExpandedAttention(const LayerWeights& w, int64_t layer, const Tensor& q_nope, const Tensor& q_rope,
                                 const AttentionLayout& layout, const StepArrays::ExpandedKeys& expanded,
                                 KvCache& cache, Tensor* out);
  absl::StatusOr<Tensor> Embed(const std::vector<int32_t>& local_ids);
  absl::StatusOr<Tensor> Logits(const Tensor& hidden, const std::vector<int32_t>& rows);
  absl::StatusOr<Tensor> FeedForward(const LayerWeights& w, const Tensor& x);
  absl::StatusOr<Tensor> RoutedExperts(const LayerWeights& w, const Tensor& x);
  // A step without tokens: only the expert dispatch of every MoE layer.
  absl::Status IdleStep();
  absl::StatusOr<Tensor> DenseMlp(const MlpWeights& w, const Tensor& x);
  absl::StatusOr<Tensor> LinearOf(const Tensor& x, const Tensor& w);
  // Sums the head shards' partial results in place (no-op without TP).
  absl::Status SumOverHeads(Tensor* partial);
  RouterConfig MakeRouterConfig() const;

  ModelConfig config_;
  ModelWeights weights_;
  RopeTable rope_;
  float softmax_scale_;
  int64_t expanded_scratch_bytes_ = kDefaultExpandedScratchBytes;
  bool decode_context_parallel_ = false;
  Ops& ops_;
  ShardLayout layout_;
  ModelShard shard_;
  std::optional<ExpertDispatch> dispatch_;  // when experts live on several ranks
  const uint64_t id_;                         // unique per Model in this process (StepInputs::model_id)
};

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_MODEL_H_
