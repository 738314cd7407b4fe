#include "simulator/step_cost.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mlaserve::sim {
namespace {

StepShape RandomShape(std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> seqs(1, 64), prefill(0, 400), context(1, 4000);
  StepShape s;
  s.sequences = seqs(rng);
  s.prefill_tokens = prefill(rng);
  s.tokens = s.sequences + s.prefill_tokens;
  s.max_replica_tokens = (s.tokens + 1) / 2 + prefill(rng) % 3;
  s.max_replica_attended = s.max_replica_tokens * context(rng);
  return s;
}

TEST(FittedStepCostTest, RecoversTheCostThatMadeTheSteps) {
  std::mt19937_64 rng(std::random_device{}());
  const std::array<double, 5> truth = {2e-3, 30e-6, 12e-6, 4e-9, 5e-6};
  std::vector<StepSample> samples;
  for (int i = 0; i < 200; ++i) {
    StepSample s{.shape = RandomShape(rng)};
    s.seconds = truth[0] + truth[1] * s.shape.tokens + truth[2] * s.shape.max_replica_tokens +
                truth[3] * s.shape.max_replica_attended + truth[4] * s.shape.sequences;
    samples.push_back(s);
  }
  absl::StatusOr<FittedStepCost> fit = FittedStepCost::Fit(samples);
  ASSERT_TRUE(fit.ok()) << fit.status();
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(fit->coefficients()[i], truth[i], 1e-3 * truth[i]) << "term " << i;
  EXPECT_NEAR(fit->coefficients()[5], 0.0, 1e-6) << "no expert term in these steps";
  EXPECT_LT(fit->median_relative_error(), 1e-4);
  for (int i = 0; i < 20; ++i) {
    const StepShape s = RandomShape(rng);
    const double expected = truth[0] + truth[1] * s.tokens + truth[2] * s.max_replica_tokens +
                            truth[3] * s.max_replica_attended + truth[4] * s.sequences;
    EXPECT_NEAR(fit->Seconds(s), expected, 1e-4 * expected);
  }
}

// Decode steps of an MoE model on a GPU: the experts' weights read grow with
// the experts some token touches (V2-Lite: each token picks 6 of 64), which
// saturates after a few dozen tokens; a line through them misses batch 1 by
// a third (the H200 sweep of docs/perf.md, 2026-12-07).
TEST(FittedStepCostTest, FollowsTheBendOfExpertsTouched) {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_int_distribution<int64_t> batch(1, 256), context(16, 300);
  const double share = 6.0 / 64;
  auto seconds = [&](const StepShape& s) {
    return 3e-3 + 9e-3 * (1 - std::pow(1 - share, static_cast<double>(s.tokens))) + 12e-6 * s.tokens +
           0.5e-9 * s.max_replica_attended;
  };
  std::vector<StepSample> samples;
  for (int i = 0; i < 300; ++i) {
    StepShape s;
    s.sequences = s.tokens = s.max_replica_tokens = i < 30 ? 1 + i % 8 : batch(rng);
    s.max_replica_attended = s.tokens * context(rng);
    samples.push_back({.shape = s, .seconds = seconds(s)});
  }
  absl::StatusOr<FittedStepCost> fit = FittedStepCost::Fit(samples);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_GT(fit->expert_share(), share / 1.5) << fit->ToString();
  EXPECT_LT(fit->expert_share(), share * 1.5) << fit->ToString();
  for (int64_t tokens : {1, 4, 16, 64, 256}) {
    StepShape s;
    s.sequences = s.tokens = s.max_replica_tokens = tokens;
    s.max_replica_attended = tokens * 150;
    EXPECT_NEAR(fit->Seconds(s), seconds(s), 0.05 * seconds(s)) << tokens << " tokens: " << fit->ToString();
  }
}

TEST(FittedStepCostTest, KeepsEveryTermNonNegative) {
  // Steps that get cheaper with more sequences would need a negative term.
  std::mt19937_64 rng(std::random_device{}());
  std::vector<StepSample> samples;
  for (int i = 0; i < 100; ++i) {
    StepSample s{.shape = RandomShape(rng)};
    s.seconds = std::max(1e-4, 5e-3 + 20e-6 * s.shape.tokens - 40e-6 * s.shape.sequences);
    samples.push_back(s);
  }
  absl::StatusOr<FittedStepCost> fit = FittedStepCost::Fit(samples);
  ASSERT_TRUE(fit.ok()) << fit.status();
  for (double c : fit->coefficients()) EXPECT_GE(c, 0);
}

TEST(FittedStepCostTest, NeedsEnoughSteps) {
  EXPECT_EQ(FittedStepCost::Fit(std::vector<StepSample>(3)).status().code(), absl::StatusCode::kInvalidArgument);
}

class RooflineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<ModelConfig> config = LoadModelConfig("tests/testdata/configs/deepseek-v3-fp8.json");
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    format_ = ChooseWeightFormat(config_, "auto", /*gpu=*/true).value();
    hw_ = MeasuredHardware("h200").value();
  }
  RooflineStepCost Cost(int ranks) {
    return RooflineStepCost::Create(config_, {.tp = 1, .dp_attention = ranks, .ep = ranks}, format_, hw_).value();
  }
  static StepShape Decode(int64_t per_replica, int replicas, int64_t context) {
    StepShape s;
    s.sequences = s.tokens = per_replica * replicas;
    s.max_replica_tokens = per_replica;
    s.max_replica_attended = s.max_replica_decode_attended = per_replica * context;
    return s;
  }
  ModelConfig config_;
  WeightFormat format_;
  Hardware hw_;
};

TEST_F(RooflineTest, DeepSeekV3Fp8OnOneNodeReadsItsShardAtTheCopyRate) {
  const RooflineStepCost cost = Cost(8);
  // An eighth of the routed experts (654B parameters at a byte each) and all
  // of the rest (attention whole on every rank: data-parallel): 90-120 GB.
  EXPECT_GT(cost.rank_weight_bytes(), 90e9);
  EXPECT_LT(cost.rank_weight_bytes(), 120e9);
  EXPECT_DOUBLE_EQ(cost.kv_bytes_per_token(), 2.0 * 576 * 61);
  // An FP8 cache's rows: 512 e4m3, 4 float scales, 64 bf16.
  EXPECT_DOUBLE_EQ(RooflineStepCost::Create(config_, {.tp = 1, .dp_attention = 8, .ep = 8}, format_, hw_,
                                            KvCacheDtype::kFp8)
                       ->kv_bytes_per_token(),
                   656.0 * 61);
  // One token per replica touches few experts: far less than the whole shard.
  const double one = cost.Seconds(Decode(1, 8, 1024));
  EXPECT_LT(one, cost.rank_weight_bytes() / hw_.hbm_bytes_per_s);
  // Cost grows with tokens and with context.
  EXPECT_LT(one, cost.Seconds(Decode(64, 8, 1024)));
  EXPECT_LT(cost.Seconds(Decode(64, 8, 1024)), cost.Seconds(Decode(64, 8, 32768)));
}

TEST_F(RooflineTest, AGroupAcrossNodesPaysTheNetwork) {
  // The same tokens per replica: past one node the all-to-all crosses the
  // slower network, so a step costs more although each rank holds less.
  EXPECT_GT(Cost(16).Seconds(Decode(64, 16, 1024)), Cost(8).Seconds(Decode(64, 8, 1024)));
}

// A long prompt's chunk on one of two replicas (V2-Lite on two H100s, the
// other replica idle): its attention computes every pair at the prefill
// rate, whatever the other replica does; the cache-read rate of decodes does
// not apply (it would put the step at three times that).
TEST_F(RooflineTest, APromptChunkComputesItsPairs) {
  absl::StatusOr<ModelConfig> lite = LoadModelConfig("tests/testdata/configs/deepseek-v2-lite.json");
  ASSERT_TRUE(lite.ok()) << lite.status();
  const WeightFormat bf16 = ChooseWeightFormat(*lite, "auto", /*gpu=*/true).value();
  const Hardware h100 = MeasuredHardware("h100").value();
  const RooflineStepCost cost =
      RooflineStepCost::Create(*lite, {.tp = 1, .dp_attention = 2, .ep = 2}, bf16, h100).value();
  StepShape chunk;
  chunk.sequences = 1;
  chunk.tokens = chunk.prefill_tokens = chunk.max_replica_tokens = 8192;
  chunk.max_replica_attended = chunk.max_replica_prompt_attended = 8192 * 120000 + 8192 * 8193 / 2;
  const double pairs = static_cast<double>(chunk.max_replica_prompt_attended);
  const double flops_s = pairs * 2.0 * lite->num_attention_heads * (lite->qk_head_dim() + lite->v_head_dim) *
                         lite->num_hidden_layers / h100.attention_flops;
  EXPECT_GT(cost.Seconds(chunk), flops_s);
  EXPECT_LT(cost.Seconds(chunk), 1.3 * flops_s);
}

TEST_F(RooflineTest, RefusesAPlanTheModelCannotTake) {
  EXPECT_FALSE(RooflineStepCost::Create(config_, {.tp = 3, .dp_attention = 1, .ep = 3}, format_, hw_).ok());
  EXPECT_FALSE(MeasuredHardware("a100").ok());
}

}  // namespace
}  // namespace mlaserve::sim
