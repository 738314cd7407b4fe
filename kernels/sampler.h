// Token sampling from one row of logits, and the logprobs requests may ask
// for alongside. SampleToken is the reference rule that every backend's
// Ops::SampleTokens implements, token for token:
//  - greedy (temperature <= 0 or top_k == 1): the largest logit, lowest id
//    on ties;
//  - otherwise rank the tokens by logit (ties: lower id first), keep the
//    first top_k (0: all), then the shortest prefix of those whose mass
//    (exp((logit - max) / temperature), in double) reaches top_p of theirs;
//  - draw u = RandomUniform(seed, sample_index) and return the first kept
//    token in id order whose cumulative mass exceeds u times the kept mass.
//    Walking in id order rather than rank order lets a GPU find the token
//    with one prefix sum instead of a sort; the distribution is the same.
// The draw depends on (seed, sample_index) alone, so a seeded request samples
// the same tokens whatever batch it runs in and however often it is
// preempted and recomputed.
#ifndef MLASERVE_KERNELS_SAMPLER_H_
#define MLASERVE_KERNELS_SAMPLER_H_

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

inline bool IsGreedy(const SamplerParams& params) { return params.temperature <= 0.0f || params.top_k == 1; }

int32_t SampleToken(absl::Span<const float> logits, const SamplerParams& params, int64_t sample_index);

// Logits as the LM head of `num_shards` vocabulary-parallel ranks leaves them,
// [num_shards, rows, shard_vocab] (token v of row r at [v / shard_vocab, r,
// v % shard_vocab]), rearranged to [rows, vocab] without the padding columns.
std::vector<float> UnshardLogits(absl::Span<const float> sharded, int64_t num_shards, int64_t rows,
                                 int64_t shard_vocab, int64_t vocab);

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

#endif  // MLASERVE_KERNELS_SAMPLER_H_
