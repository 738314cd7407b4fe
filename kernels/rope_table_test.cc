#include "kernels/rope_table.h"

#include <cmath>

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

ModelConfig Base() {
  ModelConfig c;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.rope.theta = 10000.0;
  return c;
}

TEST(RopeTableTest, DefaultFrequencies) {
  auto t = MakeRopeTable(Base());
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->inv_freq.size(), 32u);
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(t->inv_freq[i], std::pow(10000.0, -2.0 * i / 64), 1e-6);
  EXPECT_EQ(t->attention_factor, 1.0f);
  EXPECT_NEAR(MlaSoftmaxScale(Base()), 1 / std::sqrt(192.0), 1e-7);
}

// DeepSeek-V3's YaRN: factor 40 from 4096; high frequencies extrapolate,
// low ones interpolate by the factor, with a ramp between.
TEST(RopeTableTest, YarnRampAndMscale) {
  ModelConfig c = Base();
  c.rope = {.type = RopeType::kYarn, .theta = 10000, .factor = 40, .original_max_position_embeddings = 4096,
            .beta_fast = 32, .beta_slow = 1, .mscale = 1.0, .mscale_all_dim = 1.0};
  auto t = MakeRopeTable(c);
  ASSERT_TRUE(t.ok());
  auto base = [](int i) { return std::pow(10000.0, -2.0 * i / 64); };
  // low = floor(dim*ln(4096/(32*2pi))/(2 ln 1e4)) = 10, high = ceil(...1...) = 23.
  for (int i = 0; i <= 10; ++i) EXPECT_NEAR(t->inv_freq[i], base(i), 1e-6 * base(i)) << i;
  for (int i = 23; i < 32; ++i) EXPECT_NEAR(t->inv_freq[i], base(i) / 40, 1e-6 * base(i)) << i;
  double ramp = (16 - 10) / 13.0;
  EXPECT_NEAR(t->inv_freq[16], base(16) / 40 * ramp + base(16) * (1 - ramp), 1e-6 * base(16));
  EXPECT_NEAR(t->attention_factor, 1.0, 1e-7);
  double m = 0.1 * std::log(40.0) + 1;
  EXPECT_NEAR(MlaSoftmaxScale(c), m * m / std::sqrt(192.0), 1e-6);
  c.rope.mscale_all_dim = 0;
  EXPECT_NEAR(MakeRopeTable(c)->attention_factor, m, 1e-6);
}

TEST(RopeTableTest, OddRopeDimIsAnError) {
  ModelConfig c = Base();
  c.qk_rope_head_dim = 63;
  EXPECT_FALSE(MakeRopeTable(c).ok());
}

}  // namespace
}  // namespace mlaserve
