#include "worker/sampler.h"

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "gtest/gtest.h"

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

}  // namespace
}  // namespace mlaserve
