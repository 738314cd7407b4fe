#include "worker/model_weights.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/random_normal.h"

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
  Loader(const Checkpoint& checkpoint, const ModelConfig& config, const ShardLayout& shard, Ops& ops)
      : checkpoint_(checkpoint), config_(config), shard_(shard), ops_(ops) {}

  absl::StatusOr<ModelWeights> LoadAll(const LoadProgress& progress) {
    const ModelConfig& c = config_;
    ModelWeights w;
    // The embedding shard gets one extra zero row: ids outside the shard look it up.
    ASSIGN_OR_RETURN(w.embed, LoadVocabRows("model.embed_tokens.weight", shard_.vocab_shard_rows + 1));
    for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
      ASSIGN_OR_RETURN(LayerWeights lw, LoadLayer(layer));
      w.layers.push_back(std::move(lw));
      if (progress) progress(layer + 1, c.num_hidden_layers);
    }
    ASSIGN_OR_RETURN(w.final_norm, Load("model.norm.weight", {c.hidden_size}));
    const char* head_name = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    ASSIGN_OR_RETURN(w.lm_head, LoadVocabRows(head_name, shard_.vocab_shard_rows));
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

  // This shard's vocabulary rows of a [vocab, hidden] table, zero-padded to `rows`.
  absl::StatusOr<Tensor> LoadVocabRows(const std::string& name, int64_t rows) {
    const int64_t d = config_.hidden_size;
    ASSIGN_OR_RETURN(std::vector<float> values,
                     checkpoint_.ReadRowsF32(name, {config_.vocab_size, d}, shard_.vocab.begin, shard_.vocab.end));
    values.resize(rows * d, 0.0f);
    return FromHost(values, {rows, d});
  }

  // Rows `range` of a [total_rows, cols] matrix.
  absl::StatusOr<std::vector<float>> ReadRows(const std::string& name, int64_t total_rows, int64_t cols, Range range) {
    return checkpoint_.ReadRowsF32(name, {total_rows, cols}, range.begin, range.end);
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
      ASSIGN_OR_RETURN(lw.mlp, LoadMlp(prefix + "mlp.", config_.intermediate_size, shard_.dense_inner));
    }
    return lw;
  }

  // Heads are split: the q and kv_b rows of this shard's heads, o_proj's
  // matching columns. The latent projections are whole on every rank.
  absl::Status LoadAttention(const std::string& prefix, LayerWeights* lw) {
    const ModelConfig& c = config_;
    const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
    const int64_t rank = c.kv_lora_rank, v = c.v_head_dim, local = shard_.heads.size();
    const Range h = shard_.heads;
    int64_t q_in = c.hidden_size;
    std::string q_name = prefix + "q_proj.weight";
    if (c.q_lora_rank > 0) {
      q_in = c.q_lora_rank;
      q_name = prefix + "q_b_proj.weight";
      ASSIGN_OR_RETURN(lw->q_a, Load(prefix + "q_a_proj.weight", {q_in, c.hidden_size}));
      ASSIGN_OR_RETURN(lw->q_a_norm, Load(prefix + "q_a_layernorm.weight", {q_in}));
    }
    const int64_t qk = nope + rope;
    ASSIGN_OR_RETURN(std::vector<float> q, ReadRows(q_name, heads * qk, q_in, {h.begin * qk, h.end * qk}));
    auto [q_nope, q_rope] = SplitHeadRows(q, local, nope, rope, q_in);
    ASSIGN_OR_RETURN(lw->q_nope, FromHost(q_nope, {local * nope, q_in}));
    ASSIGN_OR_RETURN(lw->q_rope, FromHost(q_rope, {local * rope, q_in}));

    ASSIGN_OR_RETURN(std::vector<float> kv_a,
                     checkpoint_.ReadF32(prefix + "kv_a_proj_with_mqa.weight", {rank + rope, c.hidden_size}));
    auto [kv_latent, kv_rope] = SplitHeadRows(kv_a, 1, rank, rope, c.hidden_size);
    ASSIGN_OR_RETURN(lw->kv_a_latent, FromHost(kv_latent, {rank, c.hidden_size}));
    ASSIGN_OR_RETURN(lw->kv_a_rope, FromHost(kv_rope, {rope, c.hidden_size}));
    ASSIGN_OR_RETURN(lw->kv_a_norm, Load(prefix + "kv_a_layernorm.weight", {rank}));

    ASSIGN_OR_RETURN(std::vector<float> kv_b,
                     ReadRows(prefix + "kv_b_proj.weight", heads * (nope + v), rank, {h.begin * (nope + v), h.end * (nope + v)}));
    auto [w_uk, w_uv] = SplitHeadRows(kv_b, local, nope, v, rank);
    ASSIGN_OR_RETURN(lw->w_uk, FromHost(w_uk, {local * nope, rank}));
    ASSIGN_OR_RETURN(lw->w_uk_t, FromHost(TransposeHeads(w_uk, local, nope, rank), {local, rank, nope}));
    ASSIGN_OR_RETURN(lw->w_uv, FromHost(w_uv, {local, v, rank}));
    ASSIGN_OR_RETURN(std::vector<float> o,
                     checkpoint_.ReadColumnsF32(prefix + "o_proj.weight", {c.hidden_size, heads * v}, h.begin * v, h.end * v));
    ASSIGN_OR_RETURN(lw->o_proj, FromHost(o, {c.hidden_size, local * v}));
    return absl::OkStatus();
  }

  // Inner slice `inner` of gate_proj and up_proj of one MLP (full inner size
  // `total`), stacked as [gate; up].
  absl::StatusOr<std::vector<float>> ReadGateUp(const std::string& prefix, int64_t total, Range inner) {
    ASSIGN_OR_RETURN(std::vector<float> gate_up, ReadRows(prefix + "gate_proj.weight", total, config_.hidden_size, inner));
    ASSIGN_OR_RETURN(std::vector<float> up, ReadRows(prefix + "up_proj.weight", total, config_.hidden_size, inner));
    gate_up.insert(gate_up.end(), up.begin(), up.end());
    return gate_up;
  }

  absl::StatusOr<std::vector<float>> ReadDown(const std::string& prefix, int64_t total, Range inner) {
    return checkpoint_.ReadColumnsF32(prefix + "down_proj.weight", {config_.hidden_size, total}, inner.begin, inner.end);
  }

  // An MLP split along its inner dimension: this shard's slice `inner` of `total`.
  absl::StatusOr<MlpWeights> LoadMlp(const std::string& prefix, int64_t total, Range inner) {
    MlpWeights m;
    ASSIGN_OR_RETURN(std::vector<float> gate_up, ReadGateUp(prefix, total, inner));
    ASSIGN_OR_RETURN(m.gate_up, FromHost(gate_up, {2 * inner.size(), config_.hidden_size}));
    ASSIGN_OR_RETURN(std::vector<float> down, ReadDown(prefix, total, inner));
    ASSIGN_OR_RETURN(m.down, FromHost(down, {config_.hidden_size, inner.size()}));
    return m;
  }

  // The router whole; this shard's experts (each its inner slice); the shared
  // experts split like a dense MLP.
  absl::Status LoadMoe(const std::string& prefix, LayerWeights* lw) {
    const ModelConfig& c = config_;
    const int64_t experts = c.n_routed_experts, total = c.moe_intermediate_size, d = c.hidden_size;
    const int64_t local = shard_.experts.size(), inner = shard_.expert_inner.size();
    ASSIGN_OR_RETURN(lw->router, Load(prefix + "gate.weight", {experts, d}));
    const std::string bias_name = prefix + "gate.e_score_correction_bias";
    if (c.topk_method == TopkMethod::kNoauxTc) {
      ASSIGN_OR_RETURN(lw->router_bias, Load(bias_name, {experts}));
    }
    std::vector<float> gate_up, down;
    gate_up.reserve(local * 2 * inner * d);
    down.reserve(local * d * inner);
    for (int64_t e = shard_.experts.begin; e < shard_.experts.end; ++e) {
      const std::string expert = absl::StrCat(prefix, "experts.", e, ".");
      ASSIGN_OR_RETURN(std::vector<float> gu, ReadGateUp(expert, total, shard_.expert_inner));
      ASSIGN_OR_RETURN(std::vector<float> dn, ReadDown(expert, total, shard_.expert_inner));
      gate_up.insert(gate_up.end(), gu.begin(), gu.end());
      down.insert(down.end(), dn.begin(), dn.end());
    }
    ASSIGN_OR_RETURN(lw->experts_gate_up, FromHost(gate_up, {local, 2 * inner, d}));
    ASSIGN_OR_RETURN(lw->experts_down, FromHost(down, {local, d, inner}));
    lw->has_shared_experts = c.n_shared_experts > 0;
    if (lw->has_shared_experts) {
      ASSIGN_OR_RETURN(lw->mlp, LoadMlp(prefix + "shared_experts.", total * c.n_shared_experts, shard_.shared_inner));
    }
    return absl::OkStatus();
  }

  const Checkpoint& checkpoint_;
  const ModelConfig& config_;
  const ShardLayout& shard_;
  Ops& ops_;
};

// Makes the tensors of RandomModelWeights, each from its own seed.
class RandomMaker {
 public:
  RandomMaker(Ops& ops, uint64_t seed) : ops_(ops), seed_(seed) {}

  absl::StatusOr<Tensor> Normal(std::vector<int64_t> shape, float mean, float stddev) {
    ASSIGN_OR_RETURN(Tensor t, ops_.Empty(ops_.storage_dtype(), std::move(shape)));
    RETURN_IF_ERROR(ops_.FillRandom(&t, SplitMix64(seed_ + next_++), mean, stddev));
    return t;
  }
  // A weight reading `fan_in` inputs (the whole model's, not the shard's).
  absl::StatusOr<Tensor> Matrix(std::vector<int64_t> shape, int64_t fan_in) {
    return Normal(std::move(shape), 0.0f, 1.0f / std::sqrt(static_cast<float>(fan_in)));
  }
  absl::StatusOr<Tensor> Norm(int64_t dim) { return Normal({dim}, 1.0f, 0.1f); }
  absl::StatusOr<MlpWeights> Mlp(int64_t hidden, int64_t inner, int64_t total_inner) {
    MlpWeights m;
    ASSIGN_OR_RETURN(m.gate_up, Matrix({2 * inner, hidden}, hidden));
    ASSIGN_OR_RETURN(m.down, Matrix({hidden, inner}, total_inner));
    return m;
  }

 private:
  Ops& ops_;
  const uint64_t seed_;
  uint64_t next_ = 0;
};

absl::Status RandomAttention(const ModelConfig& c, const ShardLayout& s, Ops& ops, RandomMaker& make,
                             LayerWeights* lw) {
  const int64_t d = c.hidden_size, heads = s.heads.size(), nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const int64_t rank = c.kv_lora_rank, v = c.v_head_dim;
  int64_t q_in = d;
  if (c.q_lora_rank > 0) {
    q_in = c.q_lora_rank;
    ASSIGN_OR_RETURN(lw->q_a, make.Matrix({q_in, d}, d));
    ASSIGN_OR_RETURN(lw->q_a_norm, make.Norm(q_in));
  }
  ASSIGN_OR_RETURN(lw->q_nope, make.Matrix({heads * nope, q_in}, q_in));
  ASSIGN_OR_RETURN(lw->q_rope, make.Matrix({heads * rope, q_in}, q_in));
  ASSIGN_OR_RETURN(lw->kv_a_latent, make.Matrix({rank, d}, d));
  ASSIGN_OR_RETURN(lw->kv_a_rope, make.Matrix({rope, d}, d));
  ASSIGN_OR_RETURN(lw->kv_a_norm, make.Norm(rank));
  ASSIGN_OR_RETURN(lw->w_uk, make.Matrix({heads * nope, rank}, rank));
  // The absorbed form's W_UK_T must be W_UK's transpose: through the host.
  std::vector<float> w_uk(lw->w_uk.numel());
  RETURN_IF_ERROR(ops.Download(lw->w_uk, absl::MakeSpan(w_uk)));
  ASSIGN_OR_RETURN(lw->w_uk_t, ops.Empty(ops.storage_dtype(), {heads, rank, nope}));
  RETURN_IF_ERROR(ops.Upload(TransposeHeads(w_uk, heads, nope, rank), &lw->w_uk_t));
  ASSIGN_OR_RETURN(lw->w_uv, make.Matrix({heads, v, rank}, rank));
  ASSIGN_OR_RETURN(lw->o_proj, make.Matrix({d, heads * v}, c.num_attention_heads * v));
  return absl::OkStatus();
}

absl::Status RandomMoe(const ModelConfig& c, const ShardLayout& s, RandomMaker& make, LayerWeights* lw) {
  const int64_t d = c.hidden_size, experts = c.n_routed_experts, inner = s.expert_inner.size();
  ASSIGN_OR_RETURN(lw->router, make.Matrix({experts, d}, d));
  if (c.topk_method == TopkMethod::kNoauxTc) {
    ASSIGN_OR_RETURN(lw->router_bias, make.Normal({experts}, 0.0f, 0.1f));
  }
  ASSIGN_OR_RETURN(lw->experts_gate_up, make.Matrix({s.experts.size(), 2 * inner, d}, d));
  ASSIGN_OR_RETURN(lw->experts_down, make.Matrix({s.experts.size(), d, inner}, c.moe_intermediate_size));
  lw->has_shared_experts = c.n_shared_experts > 0;
  if (lw->has_shared_experts) {
    ASSIGN_OR_RETURN(lw->mlp, make.Mlp(d, s.shared_inner.size(), c.moe_intermediate_size * c.n_shared_experts));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelWeights> RandomModelWeights(const ModelConfig& c, const ShardLayout& shard, Ops& ops,
                                                uint64_t seed) {
  RandomMaker make(ops, SplitMix64(seed) ^ static_cast<uint64_t>(shard.group_rank));
  const int64_t d = c.hidden_size;
  ModelWeights w;
  ASSIGN_OR_RETURN(w.embed, make.Matrix({shard.vocab_shard_rows + 1, d}, d));
  Tensor padding = SliceRows(w.embed, shard.vocab_shard_rows, 1);
  RETURN_IF_ERROR(ops.Fill(&padding, 0.0f));
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    LayerWeights lw;
    ASSIGN_OR_RETURN(lw.input_norm, make.Norm(d));
    ASSIGN_OR_RETURN(lw.post_attention_norm, make.Norm(d));
    RETURN_IF_ERROR(RandomAttention(c, shard, ops, make, &lw));
    lw.is_moe = c.is_moe_layer(layer);
    if (lw.is_moe) {
      RETURN_IF_ERROR(RandomMoe(c, shard, make, &lw));
    } else {
      ASSIGN_OR_RETURN(lw.mlp, make.Mlp(d, shard.dense_inner.size(), c.intermediate_size));
    }
    w.layers.push_back(std::move(lw));
  }
  ASSIGN_OR_RETURN(w.final_norm, make.Norm(d));
  ASSIGN_OR_RETURN(w.lm_head, make.Matrix({shard.vocab_shard_rows, d}, d));
  return w;
}

absl::StatusOr<ModelWeights> LoadModelWeights(const Checkpoint& checkpoint, const ModelConfig& config,
                                              const ShardLayout& shard, Ops& ops, const LoadProgress& progress) {
  return Loader(checkpoint, config, shard, ops).LoadAll(progress);
}

}  // namespace mlaserve
