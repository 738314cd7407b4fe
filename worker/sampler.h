// Token sampling from one row of logits: greedy, or temperature with top-k
// and top-p. The random draw is a function of (seed, sample_index) only, so
// a seeded request samples the same tokens whatever batch it runs in and
// however often it is preempted and recomputed. Also the logprobs that
// requests may ask for alongside their samples.
#ifndef MLASERVE_WORKER_SAMPLER_H_
#define MLASERVE_WORKER_SAMPLER_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace mlaserve {

struct SamplerParams {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  int32_t top_k = 0;         // 0: all tokens
  float top_p = 1.0f;        // 1: no nucleus cut
  uint64_t seed = 0;
};

int32_t SampleToken(absl::Span<const float> logits, const SamplerParams& params, int64_t sample_index);

// A sampled token's log-probability and the top-N tokens' at its position,
// most likely first (ties: lower id first).
struct SampledLogprobs {
  float logprob = 0.0f;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
};

// Logprobs as vLLM reports them: log_softmax of the raw logits (before
// temperature, top-k and top-p), in double precision, of `token` and of the
// `top_n` most likely tokens (top_n is clamped to [0, vocab]).
SampledLogprobs ComputeLogprobs(absl::Span<const float> logits, int32_t token, int32_t top_n);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_SAMPLER_H_
