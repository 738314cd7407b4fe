#include "worker/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace mlaserve {
namespace {

int32_t Argmax(absl::Span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// A uniform draw in [0, 1) determined by (seed, index) alone.
double UniformDraw(uint64_t seed, int64_t index) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                    static_cast<uint32_t>(index), static_cast<uint32_t>(static_cast<uint64_t>(index) >> 32)};
  std::mt19937_64 rng(seq);
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

// The ids of the k largest logits, largest first, ties to the lower id, so
// that top-k and top-p cut, and logprobs rank, deterministically.
std::vector<int32_t> TopIds(absl::Span<const float> logits, int64_t k) {
  if (k == 0) return {};
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  order.resize(k);
  return order;
}

}  // namespace

int32_t SampleToken(absl::Span<const float> logits, const SamplerParams& params, int64_t sample_index) {
  if (params.temperature <= 0.0f || params.top_k == 1) return Argmax(logits);
  const int64_t vocab = static_cast<int64_t>(logits.size());
  const int64_t k = params.top_k > 0 ? std::min<int64_t>(params.top_k, vocab) : vocab;
  const std::vector<int32_t> order = TopIds(logits, k);
  std::vector<double> probs(k);
  const double max_logit = logits[order[0]];
  double sum = 0.0;
  for (int64_t i = 0; i < k; ++i) sum += probs[i] = std::exp((logits[order[i]] - max_logit) / params.temperature);
  int64_t kept = k;
  if (params.top_p > 0.0f && params.top_p < 1.0f) {
    double cumulative = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      cumulative += probs[i] / sum;
      if (cumulative >= params.top_p) {
        kept = i + 1;
        break;
      }
    }
  }
  const double total = std::accumulate(probs.begin(), probs.begin() + kept, 0.0);
  double target = UniformDraw(params.seed, sample_index) * total;
  for (int64_t i = 0; i < kept; ++i) {
    target -= probs[i];
    if (target < 0) return order[i];
  }
  return order[kept - 1];
}

SampledLogprobs ComputeLogprobs(absl::Span<const float> logits, int32_t token, int32_t top_n) {
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - max_logit);
  const double log_normalizer = max_logit + std::log(sum);
  auto logprob = [&](int32_t id) { return static_cast<float>(logits[id] - log_normalizer); };
  SampledLogprobs out;
  out.logprob = logprob(token);
  out.top_ids = TopIds(logits, std::clamp<int64_t>(top_n, 0, static_cast<int64_t>(logits.size())));
  for (int32_t id : out.top_ids) out.top_logprobs.push_back(logprob(id));
  return out;
}

}  // namespace mlaserve
