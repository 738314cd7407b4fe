#include "worker/model_weights.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mlaserve {
namespace {

// Row blocks of a [num_heads * (a + b), cols] matrix: per head, `a` rows then
// `b` rows. Returns the stacked `a` parts and the stacked `b` parts.
std::pair<std::vector<float>, std::vector<float>> SplitHeadRows(const std::vector<float>& m, int64_t num_heads,
                                                                int64_t a, int64_t b, int64_t cols) {
  std::vector<float> first, second;
  first.reserve(num_heads * a * cols);
  second.reserve(num_heads * b * cols);
  for (int64_t h = 0; h < num_heads; ++h) {
    auto head = m.begin() + h * (a + b) * cols;
    first.insert(first.end(), head, head + a * cols);
    second.insert(second.end(), head + a * cols, head + (a + b) * cols);
  }
  return {std::move(first), std::move(second)};
}

// Per head, [rows, cols] -> [cols, rows].
std::vector<float> TransposeHeads(const std::vector<float>& m, int64_t num_heads, int64_t rows, int64_t cols) {
  std::vector<float> out(m.size());
  for (int64_t h = 0; h < num_heads; ++h) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) out[(h * cols + c) * rows + r] = m[(h * rows + r) * cols + c];
    }
  }
  return out;
}

class Loader {
 public:
  Loader(const Checkpoint& checkpoint, const ModelConfig& config, Ops& ops)
      : checkpoint_(checkpoint), config_(config), ops_(ops) {}

  absl::StatusOr<ModelWeights> LoadAll(const LoadProgress& progress) {
    const ModelConfig& c = config_;
    ModelWeights w;
    ASSIGN_OR_RETURN(w.embed, Load("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}));
    for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
      ASSIGN_OR_RETURN(LayerWeights lw, LoadLayer(layer));
      w.layers.push_back(std::move(lw));
      if (progress) progress(layer + 1, c.num_hidden_layers);
    }
    ASSIGN_OR_RETURN(w.final_norm, Load("model.norm.weight", {c.hidden_size}));
    const char* head_name = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    ASSIGN_OR_RETURN(w.lm_head, Load(head_name, {c.vocab_size, c.hidden_size}));
    return w;
  }

 private:
  absl::StatusOr<Tensor> FromHost(const std::vector<float>& values, std::vector<int64_t> shape) {
    ASSIGN_OR_RETURN(Tensor t, ops_.Empty(ops_.storage_dtype(), std::move(shape)));
    RETURN_IF_ERROR(ops_.Upload(values, &t));
    return t;
  }

  absl::StatusOr<Tensor> Load(const std::string& name, std::vector<int64_t> shape) {
    ASSIGN_OR_RETURN(std::vector<float> values, checkpoint_.ReadF32(name, shape));
    return FromHost(values, std::move(shape));
  }

  absl::StatusOr<LayerWeights> LoadLayer(int64_t layer) {
    const std::string prefix = absl::StrCat("model.layers.", layer, ".");
    LayerWeights lw;
    ASSIGN_OR_RETURN(lw.input_norm, Load(prefix + "input_layernorm.weight", {config_.hidden_size}));
    ASSIGN_OR_RETURN(lw.post_attention_norm, Load(prefix + "post_attention_layernorm.weight", {config_.hidden_size}));
    RETURN_IF_ERROR(LoadAttention(prefix + "self_attn.", &lw));
    lw.is_moe = config_.is_moe_layer(layer);
    if (lw.is_moe) {
      RETURN_IF_ERROR(LoadMoe(prefix + "mlp.", &lw));
    } else {
      ASSIGN_OR_RETURN(lw.mlp, LoadMlp(prefix + "mlp.", config_.intermediate_size));
    }
    return lw;
  }

  absl::Status LoadAttention(const std::string& prefix, LayerWeights* lw) {
    const ModelConfig& c = config_;
    const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
    const int64_t rank = c.kv_lora_rank, v = c.v_head_dim;
    int64_t q_in = c.hidden_size;
    std::string q_name = prefix + "q_proj.weight";
    if (c.q_lora_rank > 0) {
      q_in = c.q_lora_rank;
      q_name = prefix + "q_b_proj.weight";
      ASSIGN_OR_RETURN(lw->q_a, Load(prefix + "q_a_proj.weight", {q_in, c.hidden_size}));
      ASSIGN_OR_RETURN(lw->q_a_norm, Load(prefix + "q_a_layernorm.weight", {q_in}));
    }
    ASSIGN_OR_RETURN(std::vector<float> q, checkpoint_.ReadF32(q_name, {heads * (nope + rope), q_in}));
    auto [q_nope, q_rope] = SplitHeadRows(q, heads, nope, rope, q_in);
    ASSIGN_OR_RETURN(lw->q_nope, FromHost(q_nope, {heads * nope, q_in}));
    ASSIGN_OR_RETURN(lw->q_rope, FromHost(q_rope, {heads * rope, q_in}));

    ASSIGN_OR_RETURN(std::vector<float> kv_a,
                     checkpoint_.ReadF32(prefix + "kv_a_proj_with_mqa.weight", {rank + rope, c.hidden_size}));
    auto [kv_latent, kv_rope] = SplitHeadRows(kv_a, 1, rank, rope, c.hidden_size);
    ASSIGN_OR_RETURN(lw->kv_a_latent, FromHost(kv_latent, {rank, c.hidden_size}));
    ASSIGN_OR_RETURN(lw->kv_a_rope, FromHost(kv_rope, {rope, c.hidden_size}));
    ASSIGN_OR_RETURN(lw->kv_a_norm, Load(prefix + "kv_a_layernorm.weight", {rank}));

    ASSIGN_OR_RETURN(std::vector<float> kv_b, checkpoint_.ReadF32(prefix + "kv_b_proj.weight", {heads * (nope + v), rank}));
    auto [w_uk, w_uv] = SplitHeadRows(kv_b, heads, nope, v, rank);
    ASSIGN_OR_RETURN(lw->w_uk, FromHost(w_uk, {heads * nope, rank}));
    ASSIGN_OR_RETURN(lw->w_uk_t, FromHost(TransposeHeads(w_uk, heads, nope, rank), {heads, rank, nope}));
    ASSIGN_OR_RETURN(lw->w_uv, FromHost(w_uv, {heads, v, rank}));
    ASSIGN_OR_RETURN(lw->o_proj, Load(prefix + "o_proj.weight", {c.hidden_size, heads * v}));
    return absl::OkStatus();
  }

  // gate_proj and up_proj of one MLP, stacked as [gate; up].
  absl::StatusOr<std::vector<float>> ReadGateUp(const std::string& prefix, int64_t inner) {
    ASSIGN_OR_RETURN(std::vector<float> gate_up, checkpoint_.ReadF32(prefix + "gate_proj.weight", {inner, config_.hidden_size}));
    ASSIGN_OR_RETURN(std::vector<float> up, checkpoint_.ReadF32(prefix + "up_proj.weight", {inner, config_.hidden_size}));
    gate_up.insert(gate_up.end(), up.begin(), up.end());
    return gate_up;
  }

  absl::StatusOr<MlpWeights> LoadMlp(const std::string& prefix, int64_t inner) {
    MlpWeights m;
    ASSIGN_OR_RETURN(std::vector<float> gate_up, ReadGateUp(prefix, inner));
    ASSIGN_OR_RETURN(m.gate_up, FromHost(gate_up, {2 * inner, config_.hidden_size}));
    ASSIGN_OR_RETURN(m.down, Load(prefix + "down_proj.weight", {config_.hidden_size, inner}));
    return m;
  }

  absl::Status LoadMoe(const std::string& prefix, LayerWeights* lw) {
    const ModelConfig& c = config_;
    const int64_t experts = c.n_routed_experts, inner = c.moe_intermediate_size, d = c.hidden_size;
    ASSIGN_OR_RETURN(lw->router, Load(prefix + "gate.weight", {experts, d}));
    const std::string bias_name = prefix + "gate.e_score_correction_bias";
    if (c.topk_method == TopkMethod::kNoauxTc) {
      ASSIGN_OR_RETURN(lw->router_bias, Load(bias_name, {experts}));
    }
    std::vector<float> gate_up, down;
    gate_up.reserve(experts * 2 * inner * d);
    down.reserve(experts * d * inner);
    for (int64_t e = 0; e < experts; ++e) {
      const std::string expert = absl::StrCat(prefix, "experts.", e, ".");
      ASSIGN_OR_RETURN(std::vector<float> gu, ReadGateUp(expert, inner));
      ASSIGN_OR_RETURN(std::vector<float> dn, checkpoint_.ReadF32(expert + "down_proj.weight", {d, inner}));
      gate_up.insert(gate_up.end(), gu.begin(), gu.end());
      down.insert(down.end(), dn.begin(), dn.end());
    }
    ASSIGN_OR_RETURN(lw->experts_gate_up, FromHost(gate_up, {experts, 2 * inner, d}));
    ASSIGN_OR_RETURN(lw->experts_down, FromHost(down, {experts, d, inner}));
    lw->has_shared_experts = c.n_shared_experts > 0;
    if (lw->has_shared_experts) {
      ASSIGN_OR_RETURN(lw->mlp, LoadMlp(prefix + "shared_experts.", inner * c.n_shared_experts));
    }
    return absl::OkStatus();
  }

  const Checkpoint& checkpoint_;
  const ModelConfig& config_;
  Ops& ops_;
};

}  // namespace

absl::StatusOr<ModelWeights> LoadModelWeights(const Checkpoint& checkpoint, const ModelConfig& config, Ops& ops,
                                              const LoadProgress& progress) {
  return Loader(checkpoint, config, ops).LoadAll(progress);
}

}  // namespace mlaserve
