#include "kernels/sampler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/random_normal.h"

namespace mlaserve {
namespace {

std::vector<float> RandomLogits(int n, std::mt19937& rng) {
  std::normal_distribution<float> d(0, 2);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

TEST(SamplerTest, GreedyIsArgmax) {
  std::mt19937 rng(std::random_device{}());
  std::vector<float> logits = RandomLogits(100, rng);
  int32_t best = std::max_element(logits.begin(), logits.end()) - logits.begin();
  EXPECT_EQ(SampleToken(logits, {}, 0), best);
  EXPECT_EQ(SampleToken(logits, {.temperature = 1.0f, .top_k = 1, .seed = 5}, 3), best);
}

TEST(SamplerTest, SameSeedAndIndexSameToken) {
  std::mt19937 rng(std::random_device{}());
  std::vector<float> logits = RandomLogits(50, rng);
  SamplerParams p{.temperature = 1.0f, .seed = rng()};
  for (int i = 0; i < 20; ++i) EXPECT_EQ(SampleToken(logits, p, i), SampleToken(logits, p, i));
  // Different indices draw differently (not all 20 equal for a flat-ish distribution).
  std::map<int32_t, int> seen;
  for (int i = 0; i < 20; ++i) seen[SampleToken(logits, {.temperature = 5.0f, .seed = p.seed}, i)]++;
  EXPECT_GT(seen.size(), 1u);
}

TEST(SamplerTest, TopKAndTopPRestrictTheSupport) {
  std::vector<float> logits = {0.0f, 3.0f, 2.9f, -1.0f, 2.8f};
  std::map<int32_t, int> counts;
  for (int i = 0; i < 2000; ++i) counts[SampleToken(logits, {.temperature = 1.0f, .top_k = 2, .seed = 7}, i)]++;
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_TRUE(counts.count(1) && counts.count(2));
  // p(1) = e^3 / (e^3 + e^2.9 + e^2.8 + e^0 + e^-1) ~ 0.36; top_p 0.3 keeps only token 1.
  for (int i = 0; i < 200; ++i) EXPECT_EQ(SampleToken(logits, {.temperature = 1.0f, .top_p = 0.3f, .seed = 9}, i), 1);
}

TEST(SamplerTest, FrequenciesFollowTheSoftmax) {
  std::vector<float> logits = {1.0f, 0.0f, -1.0f};
  const double z = std::exp(1.0) + 1 + std::exp(-1.0);
  std::vector<int> counts(3);
  const int n = 20000;
  for (int i = 0; i < n; ++i) counts[SampleToken(logits, {.temperature = 1.0f, .seed = 11}, i)]++;
  EXPECT_NEAR(counts[0] / double(n), std::exp(1.0) / z, 0.02);
  EXPECT_NEAR(counts[2] / double(n), std::exp(-1.0) / z, 0.02);
}

TEST(SamplerTest, TheDrawWalksTheKeptTokensInIdOrder) {
  // Kept: ids 1, 2, 4 (rank order 2, 4, 1). A draw u picks the first id in
  // id order whose cumulative mass exceeds u times their sum.
  const std::vector<float> logits = {0.0f, 2.8f, 3.0f, -1.0f, 2.9f};
  const double m1 = std::exp(-0.2), m2 = 1.0, m4 = std::exp(-0.1), total = m1 + m2 + m4;
  const SamplerParams p{.temperature = 1.0f, .top_k = 3, .seed = 42};
  for (int i = 0; i < 200; ++i) {
    const double target = RandomUniform(p.seed, i) * total;
    const int32_t expected = target < m1 ? 1 : target < m1 + m2 ? 2 : 4;
    EXPECT_EQ(SampleToken(logits, p, i), expected) << "draw " << i;
  }
}

TEST(SamplerTest, UnshardLogitsDropsThePadding) {
  // 2 rows of a vocabulary of 5 in 2 slices of 3: [slice, row, column].
  const std::vector<float> sharded = {0, 1, 2, 10, 11, 12, 3, 4, -1, 13, 14, -1};
  EXPECT_EQ(UnshardLogits(sharded, 2, 2, 3, 5), (std::vector<float>{0, 1, 2, 3, 4, 10, 11, 12, 13, 14}));
}

TEST(LogprobsTest, MatchTheLogSoftmaxOfTheRawLogits) {
  std::mt19937 rng(std::random_device{}());
  std::vector<float> logits = RandomLogits(300, rng);
  logits[7] = logits[250] = logits[3];  // ties rank the lower id first
  double z = 0;
  for (float x : logits) z += std::exp(double{x});
  auto expected = [&](int32_t id) { return std::log(std::exp(double{logits[id]}) / z); };
  std::vector<int32_t> ranked(logits.size());
  std::iota(ranked.begin(), ranked.end(), 0);
  std::stable_sort(ranked.begin(), ranked.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  for (int32_t top_n : {0, 1, 5, 20}) {
    const int32_t token = static_cast<int32_t>(rng() % logits.size());
    const SampledLogprobs lp = ComputeLogprobs(logits, token, top_n);
    EXPECT_NEAR(lp.logprob, expected(token), 1e-5) << "top_n " << top_n;
    ASSERT_EQ(lp.top_ids.size(), static_cast<size_t>(top_n));
    ASSERT_EQ(lp.top_logprobs.size(), static_cast<size_t>(top_n));
    for (int32_t i = 0; i < top_n; ++i) {
      EXPECT_EQ(lp.top_ids[i], ranked[i]) << "rank " << i;
      EXPECT_NEAR(lp.top_logprobs[i], expected(ranked[i]), 1e-5) << "rank " << i;
    }
  }
  const std::vector<float> tied = {1.0f, 2.0f, 2.0f, 2.0f};
  const SampledLogprobs lp = ComputeLogprobs(tied, 0, 3);
  EXPECT_EQ(lp.top_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(lp.top_logprobs[0], lp.top_logprobs[2]);
  EXPECT_EQ(ComputeLogprobs(tied, 0, 10).top_ids.size(), tied.size());
}

TEST(LogprobsTest, StayFiniteForLargeLogits) {
  // exp(1000) overflows a double: the log-sum-exp must subtract the maximum.
  const SampledLogprobs lp = ComputeLogprobs(std::vector<float>{1000.0f, 999.0f}, 1, 2);
  EXPECT_NEAR(lp.logprob, -1.0 - std::log1p(std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(lp.top_logprobs[0], -std::log1p(std::exp(-1.0)), 1e-6);
}

}  // namespace
}  // namespace mlaserve
