// Rotary-embedding frequencies for the decoupled rope part of MLA, including
// YaRN (as Hugging Face's `_compute_yarn_parameters`): per-pair inverse
// frequencies and the attention factor that scales cos and sin. Computed once
// on the host; each backend evaluates cos/sin of position * inv_freq in float32
// as transformers does, so positions far out still agree.
#ifndef MLASERVE_KERNELS_ROPE_TABLE_H_
#define MLASERVE_KERNELS_ROPE_TABLE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"

namespace mlaserve {

struct RopeTable {
  int64_t rope_dim = 0;
  std::vector<float> inv_freq;  // rope_dim / 2
  float attention_factor = 1.0f;
  // true: pairs are (x[2i], x[2i+1]) (DeepSeek's layout); false: (x[i], x[i + d/2]).
  bool interleaved = true;
};

absl::StatusOr<RopeTable> MakeRopeTable(const ModelConfig& config);
// The softmax scale of MLA: 1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)^2 under YaRN.
float MlaSoftmaxScale(const ModelConfig& config);

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_ROPE_TABLE_H_
