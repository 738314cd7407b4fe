#include "coordinator/scheduler.h"

#include <random>

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

std::unique_ptr<Sequence> MakeSeq(int64_t id, int64_t prompt_len, int32_t first_token = 1) {
  auto seq = std::make_unique<Sequence>();
  seq->id = id;
  for (int64_t i = 0; i < prompt_len; ++i) seq->tokens.push_back(first_token + static_cast<int32_t>(i));
  seq->prompt_len = prompt_len;
  return seq;
}

// Runs a step as the engine would: advance, then append one sampled token per sampling sequence.
void Complete(Scheduler& s, const std::vector<ScheduledSequence>& step) {
  s.Advance(step);
  for (const ScheduledSequence& item : step) {
    if (item.sample) item.seq->tokens.push_back(7);
  }
}

TEST(SchedulerTest, ChunkedPrefillUnderTheTokenBudgetThenDecodes) {
  BlockManager blocks(64, 4);
  Scheduler s(blocks, {.max_num_seqs = 8, .max_batched_tokens = 10});
  s.Add(MakeSeq(1, 25));
  s.Add(MakeSeq(2, 3));
  auto step = s.Schedule();
  ASSERT_EQ(step.size(), 1u);  // seq 1 takes the whole budget
  EXPECT_EQ(step[0].num_tokens, 10);
  EXPECT_FALSE(step[0].sample);
  Complete(s, step);
  step = s.Schedule();
  ASSERT_EQ(step.size(), 1u);
  EXPECT_EQ(step[0].num_tokens, 10);
  Complete(s, step);
  step = s.Schedule();  // 5 left of seq 1, then seq 2's 3 tokens join
  ASSERT_EQ(step.size(), 2u);
  EXPECT_EQ(step[0].num_tokens, 5);
  EXPECT_TRUE(step[0].sample);
  EXPECT_EQ(step[1].seq->id, 2);
  EXPECT_EQ(step[1].num_tokens, 3);
  EXPECT_TRUE(step[1].sample);
  Complete(s, step);
  step = s.Schedule();  // both decode one token
  ASSERT_EQ(step.size(), 2u);
  EXPECT_EQ(step[0].num_tokens + step[1].num_tokens, 2);
}

TEST(SchedulerTest, MaxNumSeqsCapsTheBatch) {
  BlockManager blocks(64, 4);
  Scheduler s(blocks, {.max_num_seqs = 2, .max_batched_tokens = 100});
  for (int i = 0; i < 5; ++i) s.Add(MakeSeq(i, 3));
  EXPECT_EQ(s.Schedule().size(), 2u);
  EXPECT_EQ(s.num_running(), 2);
  EXPECT_EQ(s.num_waiting(), 3);
}

TEST(SchedulerTest, SharedPrefixIsReusedNotRecomputed) {
  BlockManager blocks(64, 4);
  Scheduler s(blocks, {.max_num_seqs = 8, .max_batched_tokens = 100});
  s.Add(MakeSeq(1, 13));
  Complete(s, s.Schedule());
  s.Remove(1);
  s.Add(MakeSeq(2, 15));  // same first 13 tokens: 3 full blocks cached
  auto step = s.Schedule();
  ASSERT_EQ(step.size(), 1u);
  EXPECT_EQ(step[0].seq->cached_prompt_tokens, 12);
  EXPECT_EQ(step[0].num_tokens, 3);
}

TEST(SchedulerTest, PreemptsTheNewestWhenBlocksRunOutAndRecomputesIt) {
  BlockManager blocks(6, 4);  // 24 token slots
  Scheduler s(blocks, {.max_num_seqs = 8, .max_batched_tokens = 100});
  s.Add(MakeSeq(1, 8, 100));
  s.Add(MakeSeq(2, 8, 200));
  s.Add(MakeSeq(3, 7, 300));
  Complete(s, s.Schedule());  // 2 + 2 + 2 blocks: all used
  EXPECT_EQ(s.num_running(), 3);
  auto step = s.Schedule();  // seqs 1 and 2 need a third block: seq 3 is preempted
  EXPECT_EQ(s.num_preemptions(), 1);
  EXPECT_EQ(s.num_waiting(), 1);
  for (const auto& item : step) EXPECT_NE(item.seq->id, 3);
  Complete(s, step);
  s.Remove(1);
  s.Remove(2);
  step = s.Schedule();  // seq 3 comes back with its output token, recomputed
  ASSERT_EQ(step.size(), 1u);
  EXPECT_EQ(step[0].seq->id, 3);
  EXPECT_EQ(static_cast<int64_t>(step[0].seq->tokens.size()), 8);
  EXPECT_TRUE(step[0].sample);
}

// Random workloads: block accounting stays consistent and every sequence finishes.
TEST(SchedulerTest, RandomWorkloadsNeverLoseSequencesOrBlocks) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 20; ++trial) {
    BlockManager blocks(12 + rng() % 20, 4);
    Scheduler s(blocks, {.max_num_seqs = 1 + static_cast<int64_t>(rng() % 6),
                         .max_batched_tokens = 4 + static_cast<int64_t>(rng() % 40)});
    std::map<int64_t, int64_t> target;  // id -> total length to reach
    for (int64_t id = 0; id < 15; ++id) {
      const int64_t prompt = 1 + rng() % 20;
      s.Add(MakeSeq(id, prompt, static_cast<int32_t>(rng() % 3) * 1000));
      target[id] = prompt + 1 + rng() % 12;
    }
    for (int iter = 0; iter < 10000 && !target.empty(); ++iter) {
      auto step = s.Schedule();
      ASSERT_FALSE(step.empty()) << "stuck with " << s.num_waiting() << " waiting";
      Complete(s, step);
      for (const auto& item : step) {
        if (static_cast<int64_t>(item.seq->tokens.size()) >= target[item.seq->id]) {
          target.erase(item.seq->id);
          s.Remove(item.seq->id);
        }
      }
      ASSERT_EQ(blocks.num_free_blocks() + blocks.num_evictable_blocks() + blocks.num_referenced_blocks(),
                blocks.num_blocks());
    }
    EXPECT_TRUE(target.empty());
    EXPECT_EQ(blocks.num_referenced_blocks(), 0);
  }
}

}  // namespace
}  // namespace mlaserve
