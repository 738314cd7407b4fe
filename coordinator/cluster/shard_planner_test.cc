#include "coordinator/cluster/shard_planner.h"

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

ModelConfig Config() {
  ModelConfig c;
  c.vocab_size = 1024;
  c.hidden_size = 256;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 8;
  c.q_lora_rank = 96;
  c.kv_lora_rank = 64;
  c.qk_nope_head_dim = 32;
  c.qk_rope_head_dim = 16;
  c.v_head_dim = 32;
  c.intermediate_size = 512;
  c.moe_intermediate_size = 64;
  c.n_shared_experts = 1;
  c.n_routed_experts = 16;
  c.num_experts_per_tok = 4;
  c.first_k_dense_replace = 1;
  return c;
}

int64_t WholeModelBytes(const ModelConfig& c) {
  return ShardParameterCount(c, *MakeShardLayout(c, ParallelPlan{}, 0)) * 4;
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
  EXPECT_LE(p->bytes_per_rank, whole * 4 / 10);
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
