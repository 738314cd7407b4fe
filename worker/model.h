// The DeepSeek-V2/V3 forward pass (MLA attention over the paged latent cache,
// dense and MoE feed-forward), written once against the Ops interface.
// The model owns its weights; the caller owns the cache and the batch layout.
#ifndef MLASERVE_WORKER_MODEL_H_
#define MLASERVE_WORKER_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "kernels/ops.h"
#include "kernels/rope_table.h"
#include "worker/kv_cache.h"
#include "worker/model_weights.h"

namespace mlaserve {

// Absorbed: W_UK folds into the query and W_UV into the output, attention
// reads only the latent cache (decode). Expanded: K and V are up-projected
// per head from the latent (prefill-style); both must agree.
enum class AttentionForm { kAbsorbed, kExpanded };

// One step: new tokens of several sequences, concatenated in layout order.
struct ForwardBatch {
  std::vector<int32_t> token_ids;
  AttentionLayout layout;
  std::vector<int64_t> logit_rows;  // batch rows whose logits are wanted
};

class Model {
 public:
  // Loads the checkpoint in `dir` (config.json plus safetensors) onto `ops`.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir, Ops& ops,
                                                     const LoadProgress& progress = nullptr);
  static absl::StatusOr<std::unique_ptr<Model>> FromWeights(const ModelConfig& config, ModelWeights weights,
                                                            Ops& ops);

  // Runs the batch, writing its latent KV into `cache`, and returns the logits
  // of `batch.logit_rows` as float32 [rows, vocab].
  absl::StatusOr<std::vector<float>> Forward(const ForwardBatch& batch, KvCache& cache,
                                             AttentionForm form = AttentionForm::kAbsorbed);

  const ModelConfig& config() const { return config_; }

 private:
  Model(const ModelConfig& config, ModelWeights weights, RopeTable rope, Ops& ops);

  absl::StatusOr<Tensor> Attention(const LayerWeights& w, int64_t layer, const Tensor& x, const ForwardBatch& batch,
                                   const std::vector<int32_t>& positions, KvCache& cache, AttentionForm form);
  absl::Status AbsorbedAttention(const LayerWeights& w, int64_t layer, const Tensor& q_nope, const Tensor& q_rope,
                                 const AttentionLayout& layout, KvCache& cache, Tensor* out);
  absl::Status ExpandedAttention(const LayerWeights& w, int64_t layer, const Tensor& q_nope, const Tensor& q_rope,
                                 const AttentionLayout& layout, KvCache& cache, Tensor* out);
  absl::StatusOr<Tensor> FeedForward(const LayerWeights& w, const Tensor& x);
  absl::StatusOr<Tensor> DenseMlp(const MlpWeights& w, const Tensor& x);
  absl::StatusOr<Tensor> LinearOf(const Tensor& x, const Tensor& w);
  RouterConfig MakeRouterConfig() const;

  ModelConfig config_;
  ModelWeights weights_;
  RopeTable rope_;
  float softmax_scale_;
  Ops& ops_;
};

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_MODEL_H_
