#include "common/shard_layout.h"

#include <set>

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

ModelConfig Config() {
  ModelConfig c;
  c.vocab_size = 1001;
  c.num_attention_heads = 8;
  c.intermediate_size = 512;
  c.moe_intermediate_size = 64;
  c.n_shared_experts = 1;
  c.n_routed_experts = 10;
  return c;
}

TEST(ShardLayoutTest, EveryHeadExpertAndVocabRowHasExactlyOneOwnerPerReplica) {
  const ModelConfig c = Config();
  for (ParallelPlan plan : {ParallelPlan{2, 1, 2}, ParallelPlan{2, 2, 4}, ParallelPlan{4, 1, 1}, ParallelPlan{1, 4, 4},
                            ParallelPlan{2, 2, 2}, ParallelPlan{8, 1, 4}}) {
    SCOPED_TRACE(plan.ToString());
    std::multiset<int64_t> heads, vocab, expert_units;
    for (int g = 0; g < plan.group_size(); ++g) {
      absl::StatusOr<ShardLayout> s = MakeShardLayout(c, plan, g);
      ASSERT_TRUE(s.ok()) << s.status();
      EXPECT_EQ(s->group_rank, s->replica * plan.tp + s->tp_rank);
      EXPECT_EQ(s->ExpertRank(s->expert_slot, s->moe_tp_rank), g);
      if (s->replica == 0) {
        for (int64_t h = s->heads.begin; h < s->heads.end; ++h) heads.insert(h);
        for (int64_t v = s->vocab.begin; v < s->vocab.end; ++v) vocab.insert(v);
        EXPECT_LE(s->vocab.size(), s->vocab_shard_rows);
      }
      for (int64_t e = s->experts.begin; e < s->experts.end; ++e) {
        EXPECT_EQ(s->SlotOfExpert(e, c.n_routed_experts), s->expert_slot) << "expert " << e;
        for (int64_t i = s->expert_inner.begin; i < s->expert_inner.end; ++i) expert_units.insert(e * 1000 + i);
      }
    }
    EXPECT_EQ(heads.size(), 8u);
    EXPECT_EQ(std::set<int64_t>(heads.begin(), heads.end()).size(), 8u);
    EXPECT_EQ(vocab.size(), 1001u);
    EXPECT_EQ(std::set<int64_t>(vocab.begin(), vocab.end()).size(), 1001u);
    EXPECT_EQ(expert_units.size(), 10u * 64u);
    EXPECT_EQ(std::set<int64_t>(expert_units.begin(), expert_units.end()).size(), 10u * 64u);
  }
}

TEST(ShardLayoutTest, ImpossiblePlansAreRefusedWithTheReason) {
  const ModelConfig c = Config();
  auto why = [&](ParallelPlan p) { return std::string(ValidatePlan(c, p).message()); };
  EXPECT_NE(why({3, 1, 1}).find("attention heads (8) cannot be split 3 ways"), std::string::npos);
  EXPECT_NE(why({2, 1, 4}).find("ep must divide"), std::string::npos);
  EXPECT_NE(why({1, 16, 16}).find("exceeds the 10 routed experts"), std::string::npos);
  EXPECT_NE(why({0, 1, 1}).find("at least 1"), std::string::npos);
  ModelConfig dense = c;
  dense.n_routed_experts = 0;
  EXPECT_TRUE(ValidatePlan(dense, {2, 1, 1}).ok());
  EXPECT_FALSE(ValidatePlan(dense, {2, 1, 2}).ok());
  ModelConfig odd = c;
  odd.moe_intermediate_size = 66;
  EXPECT_NE(std::string(ValidatePlan(odd, {1, 4, 1}).message()).find("moe_intermediate_size"), std::string::npos);
  EXPECT_FALSE(MakeShardLayout(c, {2, 1, 2}, 2).ok());
}

}  // namespace
}  // namespace mlaserve
