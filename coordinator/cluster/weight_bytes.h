// The bytes of weights one rank keeps, tensor by tensor, as the workers
// store them (worker/model_weights.h): what the shard planner puts against
// each worker's memory.
//
// FP8 checkpoints (DeepSeek-V3/R1, Kimi K2: `quantization_config` with
// quant_method fp8) store the linear projections (q, kv_a and o projections,
// dense MLPs, routed and shared experts) as e4m3 values with 128x128 block
// scales. Kept FP8, a projection costs a byte per value and a float scale per
// row and 128 columns (the layout the FP8 GEMMs read,
// kernels/cuda/grouped_gemm.h). A shard whose columns of a projection start
// inside a 128-column group cannot keep the checkpoint's scales and holds
// that projection unquantized, unless the workers quantize at load (then any
// projection whose row length is a multiple of 16 is FP8). kv_b_proj is
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
  int64_t dense_bytes = 4;    // per element of an unquantized weight: float32 on CPUs, bf16 on GPUs
  bool keep_fp8 = false;      // an FP8 checkpoint's projections stay FP8
  bool quantize_fp8 = false;  // unquantized projections become FP8 at load
  absl::string_view name() const;  // "fp8", "bf16" or "f32"
};

// Columns sharing one FP8 scale within a row.
inline constexpr int64_t kFp8ScaleColumns = 128;

// The format workers on a GPU (`gpu`: bf16) or a CPU (float32) keep
// `config`'s weights in under the --weights_dtype choice (worker/model_weights.h,
// WeightsDtype): "auto" or empty (as stored), "bf16" (dequantized) or "fp8"
// (quantized at load where stored unquantized). InvalidArgument otherwise.
absl::StatusOr<WeightFormat> ChooseWeightFormat(const ModelConfig& config, absl::string_view weights_dtype, bool gpu);

// Bytes of the weights `shard` holds in `format` (the tensors of
// worker/model_weights.h with the shard's shapes). REQUIRES: `shard` came
// from MakeShardLayout for `config`.
int64_t ShardWeightBytes(const ModelConfig& config, const ShardLayout& shard, const WeightFormat& format);

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_CLUSTER_WEIGHT_BYTES_H_
