#include "coordinator/cluster/weight_bytes.h"

#include "absl/strings/str_cat.h"

namespace mlaserve {
namespace {

// Bytes of the tensors of one rank, by how each is kept.
class ByteCounter {
 public:
  ByteCounter(const ModelConfig& config, const WeightFormat& format)
      : format_(format),
        // Scales per 128 columns come from blocks that many columns wide.
        checkpoint_fp8_(config.fp8_block_cols > 0 && config.fp8_block_cols % kFp8ScaleColumns == 0) {}

  // An unquantized tensor of `elements` values.
  void Dense(int64_t elements) { total_ += elements * format_.dense_bytes; }
  // An [n, k] projection that FP8 checkpoints store in FP8, this shard's
  // columns starting at `first_column` of the checkpoint's.
  void Projection(int64_t n, int64_t k, int64_t first_column = 0) {
    const bool kept = format_.keep_fp8 && checkpoint_fp8_ && first_column % kFp8ScaleColumns == 0;
    const bool quantized = format_.quantize_fp8 && k % 16 == 0;
    if (!kept && !quantized) return Dense(n * k);
    total_ += n * k + n * ((k + kFp8ScaleColumns - 1) / kFp8ScaleColumns) * static_cast<int64_t>(sizeof(float));
  }
  int64_t total() const { return total_; }

 private:
  const WeightFormat format_;
  const bool checkpoint_fp8_;
  int64_t total_ = 0;
};

}  // namespace

absl::string_view WeightFormat::name() const {
  if (keep_fp8 || quantize_fp8) return "fp8";
  return dense_bytes == 2 ? "bf16" : "f32";
}

absl::StatusOr<WeightFormat> ChooseWeightFormat(const ModelConfig& config, absl::string_view weights_dtype, bool gpu) {
  WeightFormat format{.dense_bytes = gpu ? 2 : 4};
  if (weights_dtype == "auto" || weights_dtype.empty()) {
    format.keep_fp8 = config.fp8_block_rows > 0;
  } else if (weights_dtype == "fp8") {
    format.keep_fp8 = config.fp8_block_rows > 0;
    format.quantize_fp8 = true;
  } else if (weights_dtype != "bf16") {
    return absl::InvalidArgumentError(
        absl::StrCat("weights dtype \"", weights_dtype, "\" is not one of auto, bf16, fp8"));
  }
  return format;
}

int64_t ShardWeightBytes(const ModelConfig& c, const ShardLayout& s, const WeightFormat& format) {
  const int64_t d = c.hidden_size, heads = s.heads.size(), nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const int64_t rank = c.kv_lora_rank, v = c.v_head_dim;
  const int64_t q_in = c.q_lora_rank > 0 ? c.q_lora_rank : d;
  ByteCounter layer_attention(c, format);
  layer_attention.Dense(2 * d);  // input and post-attention norms
  if (c.q_lora_rank > 0) {
    layer_attention.Projection(c.q_lora_rank, d);  // q_a
    layer_attention.Dense(c.q_lora_rank);          // q_a norm
  }
  layer_attention.Projection(heads * nope, q_in);  // q_nope and q_rope: q_b_proj's (or q_proj's) rows
  layer_attention.Projection(heads * rope, q_in);
  layer_attention.Projection(rank, d);  // kv_a_proj_with_mqa: the latent and the rotary key
  layer_attention.Projection(rope, d);
  layer_attention.Dense(rank);                      // kv_a norm
  layer_attention.Dense(2 * heads * nope * rank);  // W_UK and W_UK transposed
  layer_attention.Dense(heads * v * rank);          // W_UV
  layer_attention.Projection(d, heads * v, s.heads.begin * v);  // o_proj: this shard's heads' columns

  ByteCounter dense_mlp(c, format);
  dense_mlp.Projection(2 * s.dense_inner.size(), d);  // gate and up
  dense_mlp.Projection(d, s.dense_inner.size(), s.dense_inner.begin);

  ByteCounter moe(c, format);
  moe.Dense(c.n_routed_experts * d);  // router
  if (c.topk_method == TopkMethod::kNoauxTc) moe.Dense(c.n_routed_experts);
  for (int64_t e = 0; e < s.experts.size(); ++e) {
    moe.Projection(2 * s.expert_inner.size(), d);
    moe.Projection(d, s.expert_inner.size(), s.expert_inner.begin);
  }
  if (s.shared_inner.size() > 0) {
    moe.Projection(2 * s.shared_inner.size(), d);
    moe.Projection(d, s.shared_inner.size(), s.shared_inner.begin);
  }

  ByteCounter outside_layers(c, format);
  outside_layers.Dense((2 * s.vocab_shard_rows + 1) * d);  // embedding (with its zero row) and LM head
  outside_layers.Dense(d);                                 // final norm
  int64_t total = outside_layers.total();
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    total += layer_attention.total() + (c.is_moe_layer(layer) ? moe.total() : dense_mlp.total());
  }
  return total;
}

}  // namespace mlaserve
