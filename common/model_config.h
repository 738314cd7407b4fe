// The architecture of a DeepSeek-V2/V3-family model, parsed from a Hugging Face
// `config.json` (model_type deepseek_v2, deepseek_v3 or kimi_k2). Fields absent
// from the file take the architecture's defaults; a field whose value cannot be
// honoured (unknown rope type, scoring function, activation, ...) is an error.
#ifndef MLASERVE_COMMON_MODEL_CONFIG_H_
#define MLASERVE_COMMON_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mlaserve {

enum class RopeType { kDefault, kYarn };
enum class ScoringFunc { kSoftmax, kSigmoid };
// greedy: plain top-k. group_limited_greedy (V2): groups ranked by their best
// expert. noaux_tc (V3): groups ranked by the sum of their two best biased scores.
enum class TopkMethod { kGreedy, kGroupLimitedGreedy, kNoauxTc };

struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  double factor = 1.0;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
  bool truncate = true;
};

struct ModelConfig {
  std::string model_type;  // "deepseek_v2", "deepseek_v3", "kimi_k2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // dense MLP layers
  int64_t moe_intermediate_size = 0;  // each routed or shared expert
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t q_lora_rank = 0;  // 0: no q compression (a direct q_proj), as null in the json
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool rope_interleave = true;
  // MoE.
  int64_t n_routed_experts = 0;  // 0: every layer dense
  int64_t num_experts_per_tok = 0;
  int64_t n_shared_experts = 0;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  TopkMethod topk_method = TopkMethod::kGreedy;
  ScoringFunc scoring_func = ScoringFunc::kSoftmax;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  // FP8 block quantization from `quantization_config` (0 when absent).
  int64_t fp8_block_rows = 0;
  int64_t fp8_block_cols = 0;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Values cached per token and layer: the latent c_kv and the shared rotary key.
  int64_t latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const;
};

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);  // a config.json

}  // namespace mlaserve

#endif  // MLASERVE_COMMON_MODEL_CONFIG_H_
