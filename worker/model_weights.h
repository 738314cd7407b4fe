// The weights of a DeepSeek-V2/V3 model as the forward pass consumes them,
// rearranged at load time from the checkpoint's Hugging Face layout:
// q and kv_a projections split into their no-rope and rope parts, kv_b_proj
// split into W_UK / W_UV (and W_UK transposed per head for the absorbed form),
// gate and up projections stacked, routed experts stacked per layer.
// A rank of a sharded group loads only its part (common/shard_layout.h): the
// shapes below are then per shard (local heads, inner slices, local experts,
// vocabulary rows). Every tensor is owned by the backend that loaded it.
//
// The linear projections (q_a, q, kv_a, o_proj, dense and shared MLPs,
// routed experts) may be FP8 (kernels/ops.h, Linear): e4m3 values with a
// scale per row and 128 columns. kv_b's absorbed forms, the router, the
// embedding, the LM head and the norms are always in the backend's storage
// dtype.
#ifndef MLASERVE_WORKER_MODEL_WEIGHTS_H_
#define MLASERVE_WORKER_MODEL_WEIGHTS_H_

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "common/shard_layout.h"
#include "kernels/ops.h"

namespace mlaserve {

struct MlpWeights {
  Tensor gate_up;  // [2 * inner, hidden]: gate rows then up rows
  Tensor down;     // [hidden, inner]
};

struct LayerWeights {
  Tensor input_norm;           // [hidden]
  Tensor post_attention_norm;  // [hidden]
  // Attention. With q_lora_rank 0, q_a and q_a_norm are empty and the q
  // projections read the hidden state directly.
  Tensor q_a;           // [q_lora_rank, hidden]
  Tensor q_a_norm;      // [q_lora_rank]
  Tensor q_nope;        // [heads * nope, q_in]
  Tensor q_rope;        // [heads * rope, q_in]
  Tensor kv_a_latent;   // [kv_lora_rank, hidden]
  Tensor kv_a_rope;     // [rope, hidden]
  Tensor kv_a_norm;     // [kv_lora_rank]
  Tensor w_uk;          // [heads * nope, kv_lora_rank]
  Tensor w_uk_t;        // [heads, kv_lora_rank, nope]
  Tensor w_uv;          // [heads, v_head_dim, kv_lora_rank]
  Tensor o_proj;        // [hidden, heads * v_head_dim]
  // Feed-forward: a dense MLP, or a router with experts plus shared experts.
  bool is_moe = false;
  MlpWeights mlp;             // dense layers, or the shared experts (absent if none)
  bool has_shared_experts = false;
  Tensor router;              // [n_routed_experts, hidden]
  Tensor router_bias;         // [n_routed_experts], V3 only
  Tensor experts_gate_up;     // [n_routed_experts, 2 * moe_inner, hidden]
  Tensor experts_down;        // [n_routed_experts, hidden, moe_inner]
};

struct ModelWeights {
  Tensor embed;       // [vocab_shard_rows + 1, hidden], the last row zero
  std::vector<LayerWeights> layers;
  Tensor final_norm;  // [hidden]
  Tensor lm_head;     // [vocab_shard_rows, hidden], rows past the vocabulary zero
};

// How the projections are kept:
//   kAuto: as stored -- an FP8 checkpoint's FP8 projections stay FP8 (their
//          block scales repeated per row), everything else unquantized;
//   kBf16: unquantized (FP8 tensors dequantized at load), in the backend's
//          storage dtype (bf16 on GPUs, float32 on CPUs);
//   kFp8:  FP8, quantizing unquantized projections at load (Ops::QuantizeFp8).
// A projection whose shard cannot keep the checkpoint's scales (a column
// slice that splits a 128-column group) is loaded unquantized.
enum class WeightsDtype { kAuto, kBf16, kFp8 };
// "auto" (or empty), "bf16", "fp8"; InvalidArgument naming the choices otherwise.
absl::StatusOr<WeightsDtype> ParseWeightsDtype(std::string_view name);

// Called after each layer with (layers done, total layers, checkpoint bytes
// read so far): progress display.
using LoadProgress = std::function<void(int64_t, int64_t, int64_t)>;

// A model of `config`'s shapes (the part `shard` holds) with random weights
// made on the backend, for benchmarks at real dimensions without a checkpoint:
// matrices N(0, 1/fan_in), norms N(1, 0.1), the embedding's padding row zero,
// W_UK_T the per-head transpose of W_UK. Seeded: the same seed and shard give
// the same weights.
// With kFp8 the projections are quantized after they are made.
absl::StatusOr<ModelWeights> RandomModelWeights(const ModelConfig& config, const ShardLayout& shard, Ops& ops,
                                                uint64_t seed, WeightsDtype dtype = WeightsDtype::kAuto);

// Reads only this shard's part of each tensor from the (memory-mapped)
// checkpoint; bytes stored as the backend keeps them (bf16 on a GPU, FP8)
// go to the device as they are, through pinned staging, never as floats.
absl::StatusOr<ModelWeights> LoadModelWeights(const Checkpoint& checkpoint, const ModelConfig& config,
                                              const ShardLayout& shard, Ops& ops,
                                              WeightsDtype dtype = WeightsDtype::kAuto,
                                              const LoadProgress& progress = nullptr);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_MODEL_WEIGHTS_H_
