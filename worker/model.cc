#include "worker/model.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/status_macros.h"

namespace mlaserve {

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir, Ops& ops, const LoadProgress& progress) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir + "/config.json"));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  if (config.fp8_block_rows > 0) checkpoint->set_fp8_block(config.fp8_block_rows, config.fp8_block_cols);
  ASSIGN_OR_RETURN(ModelWeights weights, LoadModelWeights(*checkpoint, config, ops, progress));
  return FromWeights(config, std::move(weights), ops);
}

absl::StatusOr<std::unique_ptr<Model>> Model::FromWeights(const ModelConfig& config, ModelWeights weights, Ops& ops) {
  ASSIGN_OR_RETURN(RopeTable rope, MakeRopeTable(config));
  return std::unique_ptr<Model>(new Model(config, std::move(weights), std::move(rope), ops));
}

Model::Model(const ModelConfig& config, ModelWeights weights, RopeTable rope, Ops& ops)
    : config_(config),
      weights_(std::move(weights)),
      rope_(std::move(rope)),
      softmax_scale_(MlaSoftmaxScale(config)),
      ops_(ops) {}

absl::StatusOr<Tensor> Model::LinearOf(const Tensor& x, const Tensor& w) {
  ASSIGN_OR_RETURN(Tensor out, ops_.Empty(ops_.storage_dtype(), {x.dim(0), w.dim(0)}));
  RETURN_IF_ERROR(ops_.Linear(x, w, &out));
  return out;
}

absl::StatusOr<std::vector<float>> Model::Forward(const ForwardBatch& batch, KvCache& cache, AttentionForm form) {
  const int64_t num_tokens = static_cast<int64_t>(batch.token_ids.size());
  const int64_t hidden = config_.hidden_size;
  if (num_tokens == 0 || batch.layout.num_tokens() != num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("batch of ", num_tokens, " tokens but its layout covers ",
                                                   batch.layout.num_tokens()));
  }
  if (batch.layout.block_size != cache.block_size()) {
    return absl::InvalidArgumentError("batch layout and cache disagree on the block size");
  }
  const std::vector<int32_t> positions = batch.layout.TokenPositions();
  ASSIGN_OR_RETURN(Tensor residual, ops_.Empty(ops_.storage_dtype(), {num_tokens, hidden}));
  RETURN_IF_ERROR(ops_.Embedding(weights_.embed, batch.token_ids, &residual));
  ASSIGN_OR_RETURN(Tensor x, ops_.Empty(ops_.storage_dtype(), {num_tokens, hidden}));
  Tensor ffn_out;
  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const LayerWeights& w = weights_.layers[layer];
    if (layer == 0) {
      RETURN_IF_ERROR(ops_.RmsNorm(residual, w.input_norm, config_.rms_norm_eps, &x));
    } else {
      RETURN_IF_ERROR(ops_.AddRmsNorm(&residual, ffn_out, w.input_norm, config_.rms_norm_eps, &x));
    }
    ASSIGN_OR_RETURN(Tensor attn_out, Attention(w, layer, x, batch, positions, cache, form));
    RETURN_IF_ERROR(ops_.AddRmsNorm(&residual, attn_out, w.post_attention_norm, config_.rms_norm_eps, &x));
    ASSIGN_OR_RETURN(ffn_out, FeedForward(w, x));
  }
  RETURN_IF_ERROR(ops_.AddRmsNorm(&residual, ffn_out, weights_.final_norm, config_.rms_norm_eps, &x));
  std::vector<int32_t> rows(batch.logit_rows.begin(), batch.logit_rows.end());
  for (int32_t r : rows) {
    if (r < 0 || r >= num_tokens) return absl::InvalidArgumentError(absl::StrCat("logit row ", r, " not in batch"));
  }
  // Gathering rows is an embedding lookup with the hidden states as the table.
  ASSIGN_OR_RETURN(Tensor last, ops_.Empty(ops_.storage_dtype(), {static_cast<int64_t>(rows.size()), hidden}));
  RETURN_IF_ERROR(ops_.Embedding(x, rows, &last));
  ASSIGN_OR_RETURN(Tensor logits, LinearOf(last, weights_.lm_head));
  std::vector<float> host(logits.numel());
  RETURN_IF_ERROR(ops_.Download(logits, absl::MakeSpan(host)));
  return host;
}

absl::StatusOr<Tensor> Model::Attention(const LayerWeights& w, int64_t layer, const Tensor& x,
                                        const ForwardBatch& batch, const std::vector<int32_t>& positions,
                                        KvCache& cache, AttentionForm form) {
  const int64_t num_tokens = x.dim(0), heads = config_.num_attention_heads;
  Tensor q_in = x;
  if (config_.q_lora_rank > 0) {
    ASSIGN_OR_RETURN(Tensor q_a, LinearOf(x, w.q_a));
    RETURN_IF_ERROR(ops_.RmsNorm(q_a, w.q_a_norm, config_.rms_norm_eps, &q_a));
    q_in = q_a;
  }
  ASSIGN_OR_RETURN(Tensor q_nope, LinearOf(q_in, w.q_nope));
  ASSIGN_OR_RETURN(Tensor q_rope, LinearOf(q_in, w.q_rope));
  q_nope = Reshape(q_nope, {num_tokens, heads, config_.qk_nope_head_dim});
  q_rope = Reshape(q_rope, {num_tokens, heads, config_.qk_rope_head_dim});
  RETURN_IF_ERROR(ops_.Rope(&q_rope, positions, rope_));

  ASSIGN_OR_RETURN(Tensor c_kv, LinearOf(x, w.kv_a_latent));
  RETURN_IF_ERROR(ops_.RmsNorm(c_kv, w.kv_a_norm, config_.rms_norm_eps, &c_kv));
  ASSIGN_OR_RETURN(Tensor k_rope, LinearOf(x, w.kv_a_rope));
  Tensor k_rope_heads = Reshape(k_rope, {num_tokens, 1, config_.qk_rope_head_dim});
  RETURN_IF_ERROR(ops_.Rope(&k_rope_heads, positions, rope_));
  RETURN_IF_ERROR(ops_.WriteLatentCache(c_kv, k_rope, batch.layout.TokenSlots(), layer, &cache.pool()));

  ASSIGN_OR_RETURN(Tensor o, ops_.Empty(ops_.storage_dtype(), {num_tokens, heads, config_.v_head_dim}));
  if (form == AttentionForm::kAbsorbed) {
    RETURN_IF_ERROR(AbsorbedAttention(w, layer, q_nope, q_rope, batch.layout, cache, &o));
  } else {
    RETURN_IF_ERROR(ExpandedAttention(w, layer, q_nope, q_rope, batch.layout, cache, &o));
  }
  return LinearOf(Reshape(o, {num_tokens, heads * config_.v_head_dim}), w.o_proj);
}

absl::Status Model::AbsorbedAttention(const LayerWeights& w, int64_t layer, const Tensor& q_nope,
                                      const Tensor& q_rope, const AttentionLayout& layout, KvCache& cache,
                                      Tensor* out) {
  const int64_t num_tokens = q_nope.dim(0), heads = q_nope.dim(1), rank = config_.kv_lora_rank;
  ASSIGN_OR_RETURN(Tensor q_latent, ops_.Empty(ops_.storage_dtype(), {num_tokens, heads, rank}));
  RETURN_IF_ERROR(ops_.HeadLinear(q_nope, w.w_uk_t, &q_latent));
  ASSIGN_OR_RETURN(Tensor o_latent, ops_.Empty(ops_.storage_dtype(), {num_tokens, heads, rank}));
  RETURN_IF_ERROR(
      ops_.MlaAbsorbedAttention(q_latent, q_rope, cache.pool(), layer, layout, softmax_scale_, &o_latent));
  return ops_.HeadLinear(o_latent, w.w_uv, out);
}

absl::Status Model::ExpandedAttention(const LayerWeights& w, int64_t layer, const Tensor& q_nope,
                                      const Tensor& q_rope, const AttentionLayout& layout, KvCache& cache,
                                      Tensor* out) {
  const int64_t heads = q_nope.dim(1), nope = config_.qk_nope_head_dim, dv = config_.v_head_dim;
  const Tensor w_uv = Reshape(w.w_uv, {heads * dv, config_.kv_lora_rank});
  for (const SequenceSlice& seq : layout.seqs) {
    const int64_t keys = seq.context_len;
    ASSIGN_OR_RETURN(Tensor c_kv, ops_.Empty(ops_.storage_dtype(), {keys, config_.kv_lora_rank}));
    ASSIGN_OR_RETURN(Tensor k_rope, ops_.Empty(ops_.storage_dtype(), {keys, config_.qk_rope_head_dim}));
    RETURN_IF_ERROR(ops_.GatherLatent(cache.pool(), layer, seq.block_table, keys, &c_kv, &k_rope));
    ASSIGN_OR_RETURN(Tensor k_nope, LinearOf(c_kv, w.w_uk));
    ASSIGN_OR_RETURN(Tensor v, LinearOf(c_kv, w_uv));
    Tensor seq_out = SliceRows(*out, seq.token_begin, seq.num_tokens);
    RETURN_IF_ERROR(ops_.MlaExpandedAttention(
        SliceRows(q_nope, seq.token_begin, seq.num_tokens), SliceRows(q_rope, seq.token_begin, seq.num_tokens),
        Reshape(k_nope, {keys, heads, nope}), k_rope, Reshape(v, {keys, heads, dv}), softmax_scale_, &seq_out));
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> Model::DenseMlp(const MlpWeights& w, const Tensor& x) {
  ASSIGN_OR_RETURN(Tensor gate_up, LinearOf(x, w.gate_up));
  ASSIGN_OR_RETURN(Tensor act, ops_.Empty(ops_.storage_dtype(), {x.dim(0), w.gate_up.dim(0) / 2}));
  RETURN_IF_ERROR(ops_.SiluMul(gate_up, &act));
  return LinearOf(act, w.down);
}

RouterConfig Model::MakeRouterConfig() const {
  RouterConfig r;
  r.sigmoid = config_.scoring_func == ScoringFunc::kSigmoid;
  r.noaux_tc = config_.topk_method == TopkMethod::kNoauxTc;
  r.group_limited = config_.topk_method == TopkMethod::kGroupLimitedGreedy;
  r.num_groups = config_.n_group;
  r.topk_groups = config_.topk_group;
  r.top_k = config_.num_experts_per_tok;
  r.normalize = config_.norm_topk_prob && r.top_k > 1;
  r.scaling = static_cast<float>(config_.routed_scaling_factor);
  // DeepSeek-V2 normalizes or scales, never both; V3 normalizes then scales.
  if (config_.model_type == "deepseek_v2" && r.normalize) r.scaling = 1.0f;
  return r;
}

absl::StatusOr<Tensor> Model::FeedForward(const LayerWeights& w, const Tensor& x) {
  if (!w.is_moe) return DenseMlp(w.mlp, x);
  const int64_t num_tokens = x.dim(0), top_k = config_.num_experts_per_tok;
  ASSIGN_OR_RETURN(Tensor router_logits, LinearOf(x, w.router));
  ASSIGN_OR_RETURN(Tensor topk_ids, ops_.Empty(DType::kI32, {num_tokens, top_k}));
  ASSIGN_OR_RETURN(Tensor topk_weights, ops_.Empty(DType::kF32, {num_tokens, top_k}));
  const Tensor* bias = w.router_bias.data != nullptr ? &w.router_bias : nullptr;
  RETURN_IF_ERROR(ops_.MoeRoute(router_logits, bias, MakeRouterConfig(), &topk_ids, &topk_weights));
  ASSIGN_OR_RETURN(Tensor out, ops_.Empty(ops_.storage_dtype(), {num_tokens, config_.hidden_size}));
  RETURN_IF_ERROR(ops_.MoeExperts(x, topk_ids, topk_weights, w.experts_gate_up, w.experts_down, 0, &out));
  if (w.has_shared_experts) {
    ASSIGN_OR_RETURN(Tensor shared, DenseMlp(w.mlp, x));
    RETURN_IF_ERROR(ops_.Add(&out, shared));
  }
  return out;
}

}  // namespace mlaserve
