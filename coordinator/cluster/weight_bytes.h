// The bytes of weights one rank keeps, tensor by tensor, as the workers
// store them (worker/model_weights.h): what the shard planner puts against
// each worker's memory.
//
// FP8 checkpoints (DeepSeek-V3/R1, Kimi K2: `quantization_config` with
// quant_method fp8) keep every linear projection they store in FP8 as e4m3
// values (1 byte) with one float scale per row and 128 columns (the layout
// the FP8 GEMMs read, kernels/cuda/grouped_gemm.h): the q, kv_a and o
// projections, dense MLPs, and the routed and shared experts. kv_b_proj is
// absorbed at load time (W_UK in both orientations and W_UV) and kept
// unquantized, as are the router, embedding, LM head and norms.
#ifndef MLASERVE_COORDINATOR_CLUSTER_WEIGHT_BYTES_H_
#define MLASERVE_COORDINATOR_CLUSTER_WEIGHT_BYTES_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/model_config.h"
#include "common/shard_layout.h"

namespace mlaserve {

// How a worker keeps its weights.
struct WeightFormat {
  int64_t dense_bytes = 4;  // per element of an unquantized weight: float32 on CPUs, bf16 on GPUs
  bool fp8 = false;         // the projections an FP8 checkpoint stores in FP8 stay FP8
  absl::string_view name() const;  // "fp8", "bf16" or "f32"
};

// Columns sharing one FP8 scale within a row.
inline constexpr int64_t kFp8ScaleColumns = 128;

// The format workers on a GPU (`gpu`: bf16) or a CPU (float32) keep
// `config`'s weights in under the workers' --weights_dtype choice: "auto"
// (as stored: FP8 where the checkpoint is FP8), "bf16" (dequantized) or
// "fp8". InvalidArgument for another choice.
absl::StatusOr<WeightFormat> ChooseWeightFormat(const ModelConfig& config, absl::string_view weights_dtype, bool gpu);

// Bytes of the weights `shard` holds in `format` (the tensors of
// worker/model_weights.h with the shard's shapes). REQUIRES: `shard` came
// from MakeShardLayout for `config`.
int64_t ShardWeightBytes(const ModelConfig& config, const ShardLayout& shard, const WeightFormat& format);

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_CLUSTER_WEIGHT_BYTES_H_
