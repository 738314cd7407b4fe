// A deliberately naive DeepSeek-V2/V3 forward pass for tests: double precision,
// no cache, no batching, expanded MLA, reading the checkpoint's tensors by
// their Hugging Face names and following transformers' formulation literally
// (de-interleave then rotate-half rope, per-head K/V up-projection). It shares
// no code with Model beyond the config and safetensors readers, so agreement
// between the two means something.
#ifndef MLASERVE_WORKER_REFERENCE_MODEL_H_
#define MLASERVE_WORKER_REFERENCE_MODEL_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"

namespace mlaserve {

struct ReferenceOptions {
  // DeepSeek-V3's FP8 inference: the input of every projection the
  // checkpoint stores in FP8 is quantized per token and 128 columns first
  // (s = max(amax, 1e-4) / 448, x -> e4m3(x / s) * s), as its reference
  // implementation's act_quant does -- except kv_b_proj's, which the absorbed
  // attention applies in high precision. Weights are dequantized either way.
  bool fp8_activations = false;
};

// Logits [ids.size(), vocab] at every position.
absl::StatusOr<std::vector<float>> ReferenceForward(const ModelConfig& config, const Checkpoint& checkpoint,
                                                    const std::vector<int32_t>& ids, ReferenceOptions options = {});

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_REFERENCE_MODEL_H_
