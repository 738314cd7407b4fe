#include "coordinator/cluster/shard_planner.h"

#include "coordinator/cluster/plan_measurements.h"

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

// The tiny DeepSeek-V3 fixture's shapes.
ModelConfig Config() {
  absl::StatusOr<ModelConfig> c = LoadModelConfig("tests/testdata/tiny-deepseek-v3/config.json");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

int64_t WholeModelBytes(const ModelConfig& c) {
  return ShardWeightBytes(c, *MakeShardLayout(c, ParallelPlan{}, 0), WeightFormat{});
}

TEST(ShardPlannerTest, UnknownMemoryGivesOneReplicaPerWorker) {
  absl::StatusOr<ClusterPlan> p = PlanCluster(Config(), {0, 0, 0, 0}, {});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_groups, 4);
  EXPECT_EQ(p->plan.group_size(), 1);
}

TEST(ShardPlannerTest, SmallestGroupThatFitsSplitsHeadsAndExperts) {
  const ModelConfig c = Config();
  const int64_t whole = WholeModelBytes(c);
  // Room for a bit more than a third of the model per worker: groups of 4.
  absl::StatusOr<ClusterPlan> p = PlanCluster(c, std::vector<int64_t>(8, whole * 4 / 10), {});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->plan.tp, 4);
  EXPECT_EQ(p->plan.ep, 4);
  EXPECT_EQ(p->num_groups, 2);
  EXPECT_LE(p->rank.needed_bytes(), whole * 4 / 10);
}

TEST(ShardPlannerTest, KvDemandTurnsHeadParallelismIntoAttentionReplicas) {
  const ModelConfig c = Config();
  // 8 bf16 workers, half of whose memory holds the whole model's weights:
  // 16 sequences of 64 tokens at 1 KiB per token (1 MiB per rank of a
  // single replica) do not fit beside them, but beside half of them.
  PlanRequest request{.weights = {.dense_bytes = 2},
                      .memory_utilization = 0.5,
                      .reserve_bytes = 1000,
                      .kv_bytes_per_token = 1024,
                      .kv_sequences = 16,
                      .kv_context = 64};
  const int64_t whole = ShardWeightBytes(c, *MakeShardLayout(c, ParallelPlan{}, 0), request.weights);
  absl::StatusOr<ClusterPlan> p = PlanCluster(c, std::vector<int64_t>(8, 2 * whole), request);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->plan.group_size(), 2);  // one replica of 2 ranks: each holds half the weights and all of the KV
  EXPECT_EQ(p->plan.dp_attention, 1);
  EXPECT_EQ(p->rank.needed_kv_bytes, 16 * 64 * 1024);
  EXPECT_EQ(p->rank.kv_bytes, whole - p->rank.weight_bytes - 1000);
  EXPECT_EQ(p->rank.kv_tokens, p->rank.kv_bytes / 1024);

  // At 16 KiB per token the sequences need 16 MiB per rank in one replica,
  // 4 MiB in each of four. Memory for a group of 4 ranks as four replicas
  // (attention replicated four ways, experts split four ways) and no less:
  request.kv_bytes_per_token = 16 * 1024;
  const ParallelPlan dp4{.tp = 1, .dp_attention = 4, .ep = 4};
  const RankBudget replicated = *BudgetRank(c, dp4, 0, request);
  EXPECT_EQ(replicated.needed_kv_bytes, 4 * 64 * 16 * 1024);
  const int64_t memory = 2 * (replicated.needed_bytes() + 1024);
  p = PlanCluster(c, std::vector<int64_t>(8, memory), request);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->plan.dp_attention, 4);
  EXPECT_EQ(p->plan.tp, 1);
  EXPECT_EQ(p->num_groups, 2);
  EXPECT_EQ(p->rank.weight_bytes, replicated.weight_bytes);
  EXPECT_EQ(p->rank.kv_bytes, memory / 2 - replicated.weight_bytes - 1000);

  request.kv_sequences = 128;  // 16 per replica even in a group of 8: more than any plan holds
  const absl::Status none = PlanCluster(c, std::vector<int64_t>(8, memory), request).status();
  EXPECT_NE(none.message().find("16 sequence(s) of 64 tokens in each of 8 replica(s)"), std::string::npos) << none;
}

TEST(ShardPlannerTest, FixedKvPoolCountsOnEveryRank) {
  const ModelConfig c = Config();
  const PlanRequest request{.kv_bytes_per_token = 4096, .kv_pool_tokens = 256 * 64};
  const int64_t whole = WholeModelBytes(c);
  // One worker cannot hold the weights and the pool; two can, each with
  // half the weights and a whole pool.
  absl::StatusOr<ClusterPlan> p = PlanCluster(c, std::vector<int64_t>(2, whole * 6 / 10 + 256 * 64 * 4096), request);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->plan.group_size(), 2);
  EXPECT_EQ(p->rank.kv_bytes, 256 * 64 * 4096);
  EXPECT_EQ(p->rank.kv_tokens, 256 * 64);
}

TEST(ShardPlannerTest, UserChoicesAreHonouredOrRefusedWithTheReason) {
  const ModelConfig c = Config();
  absl::StatusOr<ClusterPlan> p = PlanCluster(c, {0, 0, 0, 0}, {.tp = 2, .ep = 2});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_groups, 2);
  EXPECT_EQ(p->plan.ep, 2);
  p = PlanCluster(c, {0, 0, 0, 0}, {.tp = 2, .dp_attention = 2, .ep = 4});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_groups, 1);
  p = PlanCluster(c, {0, 0, 0, 0}, {.ep = 4});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->plan.tp, 4);

  EXPECT_NE(PlanCluster(c, {0, 0, 0}, {.tp = 3}).status().message().find("attention heads (8) cannot be split 3 ways"),
            std::string::npos)
      << PlanCluster(c, {0, 0, 0}, {.tp = 3}).status();
  EXPECT_NE(PlanCluster(c, {0, 0, 0}, {.tp = 2}).status().message().find("3 workers cannot form groups"),
            std::string::npos);
  const absl::Status too_big = PlanCluster(c, {WholeModelBytes(c) / 10, WholeModelBytes(c) / 10}, {}).status();
  EXPECT_EQ(too_big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_big.message().find("GiB per rank"), std::string::npos) << too_big;
  EXPECT_FALSE(PlanCluster(c, {}, {}).ok());
}

}  // namespace
}  // namespace mlaserve

namespace mlaserve {
namespace {

// Every plan of `workers` workers, found by trying every degree: whether one
// is valid for `c` and, with `memory` known, fits it.
bool SomePlanFits(const ModelConfig& c, int workers, int64_t memory, const PlanRequest& request) {
  for (int size = 1; size <= workers; ++size) {
    if (workers % size != 0) continue;
    for (int dp = 1; dp <= size; ++dp) {
      if (size % dp != 0) continue;
      const int tp = size / dp;
      if ((request.tp > 0 && request.tp != tp) || (request.dp_attention > 0 && request.dp_attention != dp)) continue;
      for (int ep = 1; ep <= size; ++ep) {
        if (request.ep > 0 && ep != request.ep) continue;
        const ParallelPlan plan{tp, dp, ep};
        if (!ValidatePlan(c, plan).ok()) continue;
        if (memory == 0) return true;
        absl::StatusOr<RankBudget> budget = BudgetRank(c, plan, memory, request);
        if (budget.ok() && budget->needed_bytes() <= memory) return true;
      }
    }
  }
  return false;
}

// Odd head, expert and worker counts, each degree left to the planner or
// fixed: whenever some plan fits, one is chosen (and fits); a refusal names
// why every candidate failed.
TEST(ShardPlannerTest, FindsAPlanWheneverOneFitsAndNamesEveryFailure) {
  const ModelConfig base = Config();
  int chosen = 0, refused = 0;
  for (int heads : {1, 3, 5, 7, 10, 12}) {
    for (int experts : {0, 3, 6, 10, 16}) {
      ModelConfig c = base;
      c.num_attention_heads = heads;
      c.n_routed_experts = experts;
      if (experts == 0) c.n_shared_experts = 0;
      c.num_experts_per_tok = std::min<int64_t>(c.num_experts_per_tok, std::max(1, experts));
      const int64_t whole = WholeModelBytes(c);
      for (int workers = 1; workers <= 16; ++workers) {
        for (int64_t memory : {int64_t{0}, whole * 6 / 10, whole / 5}) {
          for (PlanRequest request : {PlanRequest{}, PlanRequest{.ep = 2}, PlanRequest{.dp_attention = 2},
                                      PlanRequest{.tp = 2, .ep = 4}}) {
            const std::string where = absl::StrCat(heads, " heads, ", experts, " experts, ", workers,
                                                   " workers of ", memory, " bytes, tp=", request.tp,
                                                   " dp_attention=", request.dp_attention, " ep=", request.ep);
            absl::StatusOr<ClusterPlan> plan = PlanCluster(c, std::vector<int64_t>(workers, memory), request);
            if (SomePlanFits(c, workers, memory, request)) {
              ASSERT_TRUE(plan.ok()) << where << ": " << plan.status();
              EXPECT_TRUE(ValidatePlan(c, plan->plan).ok()) << where;
              EXPECT_EQ(plan->num_groups * plan->plan.group_size(), workers) << where;
              if (memory > 0) EXPECT_LE(plan->rank.needed_bytes(), memory) << where;
              ++chosen;
              continue;
            }
            ASSERT_FALSE(plan.ok()) << where << ": chose " << plan->ToString();
            ++refused;
            for (const absl::StatusOr<ParallelPlan>& candidate : CandidatePlans(c, workers, request)) {
              if (!candidate.ok()) {
                EXPECT_NE(plan.status().message().find(candidate.status().message()), std::string::npos)
                    << where << ": " << plan.status() << " does not say " << candidate.status();
              } else {
                EXPECT_NE(plan.status().message().find(candidate->ToString()), std::string::npos)
                    << where << ": " << plan.status() << " does not name " << candidate->ToString();
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GT(chosen, 0);
  EXPECT_GT(refused, 0);
}

}  // namespace
}  // namespace mlaserve

namespace mlaserve {
namespace {

// scale_bench measured a one-group EP plan faster than a group per worker:
// with both fitting, the measured one wins and the plan says why; a plan that
// does not fit never wins, however fast; without measurements, preference.
TEST(ShardPlannerTest, TheFastestMeasuredPlanThatFitsWins) {
  const ModelConfig c = Config();
  absl::StatusOr<std::vector<PlanMeasurement>> measured = ParsePlanMeasurements(R"([
      {"workers": 4, "plan": "dp", "tp": 1, "dp_attention": 1, "ep": 1, "output_throughput": 300.0, "error": ""},
      {"workers": 4, "plan": "ep", "tp": 1, "dp_attention": 4, "ep": 4, "output_throughput": 420.5, "error": ""},
      {"workers": 4, "plan": "tp", "tp": 4, "dp_attention": 1, "ep": 4, "output_throughput": 999.0,
       "error": "the cluster exited"},
      {"workers": 2, "plan": "ep", "tp": 1, "dp_attention": 2, "ep": 2, "output_throughput": 5000.0, "error": ""}])");
  ASSERT_TRUE(measured.ok()) << measured.status();
  ASSERT_EQ(measured->size(), 3u) << "the failed row is left out";
  PlanRequest request;
  request.measured = *measured;
  absl::StatusOr<ClusterPlan> plan = PlanCluster(c, {0, 0, 0, 0}, request);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->plan.dp_attention, 4);
  EXPECT_EQ(plan->plan.ep, 4);
  EXPECT_EQ(plan->num_groups, 1);
  EXPECT_NE(plan->why.find("420.5"), std::string::npos) << plan->why;
  EXPECT_NE(plan->why.find("300.0"), std::string::npos) << plan->why;
  // Memory for a quarter of the model per worker: the DP plan no longer fits.
  const int64_t whole = WholeModelBytes(c);
  request.measured = {{.plan = {1, 1, 1}, .workers = 4, .output_tokens_per_s = 1e6}};
  plan = PlanCluster(c, std::vector<int64_t>(4, whole * 4 / 10), request);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->plan.group_size(), 4);
  EXPECT_NE(plan->why.find("no plan that fits was measured"), std::string::npos) << plan->why;
  request.measured.clear();
  plan = PlanCluster(c, {0, 0, 0, 0}, request);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->plan.group_size(), 1);
  EXPECT_EQ(plan->why, "the smallest group that fits, with the fewest attention replicas");
  EXPECT_FALSE(ParsePlanMeasurements("{}").ok());
}

}  // namespace
}  // namespace mlaserve
