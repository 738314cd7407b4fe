#include "kernels/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/random_normal.h"

namespace mlaserve {
namespace {

int32_t Argmax(absl::Span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
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
  if (IsGreedy(params)) return Argmax(logits);
  const int64_t vocab = static_cast<int64_t>(logits.size());
  const int64_t k = params.top_k > 0 ? std::min<int64_t>(params.top_k, vocab) : vocab;
  std::vector<int32_t> kept = TopIds(logits, k);
  const double max_logit = logits[kept[0]];
  auto mass = [&](int32_t id) { return std::exp((double{logits[id]} - max_logit) / double{params.temperature}); };
  if (params.top_p > 0.0f && params.top_p < 1.0f) {
    double sum = 0.0;
    for (int32_t id : kept) sum += mass(id);
    const double target = double{params.top_p} * sum;
    double cumulative = 0.0;
    for (size_t i = 0; i < kept.size(); ++i) {
      cumulative += mass(kept[i]);
      if (cumulative >= target) {
        kept.resize(i + 1);
        break;
      }
    }
  }
  std::sort(kept.begin(), kept.end());
  double total = 0.0;
  for (int32_t id : kept) total += mass(id);
  double target = RandomUniform(params.seed, static_cast<uint64_t>(sample_index)) * total;
  for (int32_t id : kept) {
    target -= mass(id);
    if (target < 0) return id;
  }
  return kept.back();
}

std::vector<float> UnshardLogits(absl::Span<const float> sharded, int64_t num_shards, int64_t rows,
                                 int64_t shard_vocab, int64_t vocab) {
  std::vector<float> logits(rows * vocab);
  for (int64_t p = 0; p < num_shards; ++p) {
    const int64_t width = std::min(shard_vocab, vocab - p * shard_vocab);
    for (int64_t r = 0; r < rows && width > 0; ++r) {
      const float* src = sharded.data() + (p * rows + r) * shard_vocab;
      std::copy(src, src + width, logits.data() + r * vocab + p * shard_vocab);
    }
  }
  return logits;
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
