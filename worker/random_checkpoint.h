// Synthetic checkpoints: every tensor a DeepSeek-V2/V3 checkpoint of a given
// config holds, under its Hugging Face name, filled with seeded random values.
// Tests use it for architectures no fixture covers (q_lora_rank null, softmax
// gates, fp8 weights); benchmarks for real shapes without downloads.
#ifndef MLASERVE_WORKER_RANDOM_CHECKPOINT_H_
#define MLASERVE_WORKER_RANDOM_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "common/model_config.h"

namespace mlaserve {

struct TensorShape {
  std::string name;
  std::vector<int64_t> shape;
};

// Names and shapes of every tensor the model reads, in a stable order.
std::vector<TensorShape> CheckpointTensorShapes(const ModelConfig& config);

// Writes `dir`/model.safetensors. Norm weights are drawn near 1, the others
// from N(0, std) with std = 1/sqrt(fan_in); `dtype` is F32, BF16 or F8_E4M3
// (fp8: 2-D weights quantized in 128x128 blocks with `_scale_inv` tensors).
absl::Status WriteRandomCheckpoint(const ModelConfig& config, const std::string& dir, uint64_t seed,
                                   DType dtype = DType::kBF16);

// Whether DeepSeek's FP8 checkpoints store tensor `name` of `shape` in FP8:
// the 2-D linear projections, not the embedding, the LM head or the router.
bool IsFp8Projection(const std::string& name, const std::vector<int64_t>& shape);

// The FP8 checkpoint of the (bf16 or float) checkpoint in `src_dir`, as
// DeepSeek quantizes: every IsFp8Projection tensor in 128x128 blocks with its
// `_scale_inv`, the rest copied; config.json gains the quantization_config.
// Writes `dst_dir`/config.json and model.safetensors.
absl::Status QuantizeCheckpointFp8(const std::string& src_dir, const std::string& dst_dir);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_RANDOM_CHECKPOINT_H_
