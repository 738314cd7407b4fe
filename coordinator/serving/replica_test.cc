#include "coordinator/serving/replica.h"

#include <limits>
#include <memory>
#include <vector>

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

constexpr int64_t kBlockSize = 4;

class BestReplicaTest : public ::testing::Test {
 protected:
  BestReplicaTest() {
    for (int r = 0; r < 3; ++r) replicas_.push_back(std::make_unique<Replica>(64, kBlockSize, SchedulerOptions{}));
  }
  // Caches `tokens` (whole blocks) in replica `r`'s index.
  void CachePrefix(int r, const std::vector<int32_t>& tokens) {
    BlockManager& blocks = replicas_[r]->blocks;
    std::vector<int32_t> table = blocks.Allocate(static_cast<int64_t>(tokens.size()) / kBlockSize).value();
    ASSERT_TRUE(blocks.Cache(tokens, table).ok());
    ASSERT_TRUE(blocks.Release(table).ok());
  }
  // `n` waiting requests in replica `r`.
  void AddLoad(int r, int n) {
    for (int i = 0; i < n; ++i) {
      auto seq = std::make_unique<Sequence>();
      seq->id = next_id_++;
      seq->tokens = {1, 2, 3};
      seq->prompt_len = 3;
      replicas_[r]->scheduler.Add(std::move(seq));
    }
  }
  std::vector<std::unique_ptr<Replica>> replicas_;
  int64_t next_id_ = 0;
};

TEST_F(BestReplicaTest, TheLongestCachedPrefixWinsWithinTheSlack) {
  const std::vector<int32_t> prefix = {5, 6, 7, 8, 9, 10, 11, 12};
  CachePrefix(1, prefix);
  std::vector<int32_t> prompt = prefix;
  prompt.push_back(40);
  AddLoad(1, 3);
  const Placement p = BestReplica(replicas_, prompt, /*slack=*/3);
  EXPECT_EQ(p.replica, 1);
  EXPECT_EQ(p.cached_tokens(), 8);
}

TEST_F(BestReplicaTest, TheLeastLoadedTakesItPastTheSlack) {
  const std::vector<int32_t> prefix = {5, 6, 7, 8};
  CachePrefix(1, prefix);
  AddLoad(0, 2);
  AddLoad(1, 6);
  // Replica 1 is 6 requests busier than replica 2: past a slack of 5.
  const Placement p = BestReplica(replicas_, {5, 6, 7, 8, 9}, /*slack=*/5);
  EXPECT_EQ(p.replica, 2);
  EXPECT_EQ(p.cached_tokens(), 0);
  // Without a limit the prefix wins whatever the load (what migration reads).
  EXPECT_EQ(BestReplica(replicas_, {5, 6, 7, 8, 9}, std::numeric_limits<int64_t>::max()).replica, 1);
}

TEST_F(BestReplicaTest, AmongEqualPrefixesTheLeastLoaded) {
  AddLoad(0, 1);
  AddLoad(1, 1);
  EXPECT_EQ(BestReplica(replicas_, {1, 2, 3, 4, 5}, 8).replica, 2);
}

}  // namespace
}  // namespace mlaserve
