#include "coordinator/serving/context_parallel.h"

#include <random>

#include "coordinator/serving/step_trace.h"
#include "gtest/gtest.h"

namespace mlaserve {
namespace {

constexpr int64_t kBlockSize = 4;

class ContextParallelTest : public ::testing::Test {
 protected:
  // Three replicas; prompts of at least 20 tokens still to compute take
  // chunks of 3 x 8 tokens.
  void MakeReplicas(std::vector<int64_t> blocks) {
    SchedulerOptions options{.max_num_seqs = 8, .max_batched_tokens = 8};
    options.context_parallel_min_tokens = 20;
    options.context_parallel_replicas = static_cast<int>(blocks.size());
    options.can_split = [this](const Sequence& seq, int64_t begin, int64_t tokens) {
      return cp_.CanSplit(replicas_, seq, begin, tokens);
    };
    for (int64_t n : blocks) replicas_.push_back(std::make_unique<Replica>(n, kBlockSize, options));
  }

  Sequence* Submit(int replica, std::vector<int32_t> prompt) {
    auto seq = std::make_unique<Sequence>();
    seq->id = next_id_++;
    seq->replica = replica;
    seq->tokens = std::move(prompt);
    seq->prompt_len = static_cast<int64_t>(seq->tokens.size());
    seq->sampling.max_tokens = 4;
    Sequence* out = seq.get();
    replicas_[replica]->scheduler.Add(std::move(seq));
    return out;
  }

  internal::v1::StepRequest Step() {
    scheduled_.clear();
    for (auto& r : replicas_) scheduled_.push_back(r->scheduler.Schedule());
    internal::v1::StepRequest step;
    cp_.Plan(replicas_, scheduled_, &step);
    return step;
  }

  // Blocks referenced in each replica.
  std::vector<int64_t> Referenced() const {
    std::vector<int64_t> out;
    for (const auto& r : replicas_) out.push_back(r->blocks.num_referenced_blocks());
    return out;
  }

  static std::vector<int32_t> Prompt(int n, int32_t first) {
    std::vector<int32_t> p(n);
    for (int i = 0; i < n; ++i) p[i] = first + i;
    return p;
  }

  std::vector<std::unique_ptr<Replica>> replicas_;
  std::vector<std::vector<ScheduledSequence>> scheduled_;  // by the last Step
  ContextParallel cp_;
  int64_t next_id_ = 1;
};

TEST_F(ContextParallelTest, SplitsALongPromptsChunksUntilItsPrefillEnds) {
  MakeReplicas({32, 32, 32});
  const std::vector<int32_t> prompt = Prompt(50, 100);
  Sequence* seq = Submit(1, prompt);

  // 50 to compute: a chunk of 24 in six slices of 4, paired first with
  // last: the home replica takes the first and the last.
  internal::v1::StepRequest step = Step();
  ASSERT_EQ(step.context_parallel_size(), 1);
  const internal::v1::ContextParallelChunk& chunk = step.context_parallel(0);
  EXPECT_EQ(chunk.request_id(), seq->id);
  EXPECT_EQ(std::vector<int32_t>(chunk.replicas().begin(), chunk.replicas().end()),
            (std::vector<int32_t>{1, 0, 2, 2, 0, 1}));
  EXPECT_EQ(std::vector<int64_t>(chunk.slice_tokens().begin(), chunk.slice_tokens().end()),
            (std::vector<int64_t>(6, 4)));
  ASSERT_EQ(step.sequences_size(), 2);
  for (const internal::v1::StepSequence& copy : step.sequences()) {
    EXPECT_EQ(copy.request_id(), CopyId(seq->id));
    EXPECT_TRUE(copy.start());
    EXPECT_FALSE(copy.sample());
    EXPECT_EQ(copy.context_len(), 24);
    EXPECT_EQ(std::vector<int32_t>(copy.token_ids().begin(), copy.token_ids().end()),
              std::vector<int32_t>(prompt.begin(), prompt.begin() + 24));
    EXPECT_EQ(copy.new_blocks_size(), 6);
  }
  EXPECT_EQ(Referenced(), (std::vector<int64_t>{6, 6, 6}));
  // Each replica computes its slices, at their positions; each pair attends
  // to as many keys (0-4 and 20-24: 10 + 90 pairs; 4-8 and 16-20: 26 + 74).
  const std::vector<std::vector<ScheduledSequence>> computed = ComputedByReplica(scheduled_, step);
  ASSERT_EQ(computed.size(), 3u);
  const std::vector<std::vector<int64_t>> begins = {{4, 16}, {0, 20}, {8, 12}};
  for (int replica = 0; replica < 3; ++replica) {
    ASSERT_EQ(computed[replica].size(), 2u) << replica;
    StepShape shape;
    for (int k = 0; k < 2; ++k) {
      EXPECT_EQ(computed[replica][k].seq, seq);
      EXPECT_EQ(computed[replica][k].begin, begins[replica][k]) << replica;
      EXPECT_EQ(computed[replica][k].num_tokens, 4) << replica;
    }
    shape.AddReplica(computed[replica]);
    EXPECT_EQ(shape.max_replica_attended, 100) << replica;
  }

  // 26 left: the next 24, the copies growing by their new blocks only.
  step = Step();
  ASSERT_EQ(step.context_parallel_size(), 1);
  for (const internal::v1::StepSequence& copy : step.sequences()) {
    EXPECT_FALSE(copy.start());
    EXPECT_EQ(copy.context_len(), 48);
    EXPECT_EQ(copy.token_ids(0), prompt[24]);
    EXPECT_EQ(copy.new_blocks_size(), 6);
  }
  EXPECT_TRUE(cp_.TakeReleased().empty());

  // 2 left: the home replica alone; the copies go, their full blocks cached
  // in their replicas.
  step = Step();
  EXPECT_EQ(step.context_parallel_size(), 0);
  EXPECT_EQ(step.sequences_size(), 0);
  EXPECT_EQ(cp_.TakeReleased(), (std::vector<int64_t>{CopyId(seq->id)}));
  EXPECT_EQ(cp_.num_split(), 0);
  EXPECT_EQ(Referenced(), (std::vector<int64_t>{0, 13, 0}));
  EXPECT_EQ(replicas_[0]->blocks.num_cached_blocks(), 12);
  EXPECT_EQ(replicas_[2]->blocks.num_cached_blocks(), 12);
}

TEST_F(ContextParallelTest, CopiesAdoptTheirReplicasCachedPrefix) {
  MakeReplicas({40, 40});
  // A first prompt leaves its first 24 tokens cached in both replicas.
  const std::vector<int32_t> shared = Prompt(24, 7);
  std::vector<int32_t> first = shared;
  for (int i = 0; i < 24; ++i) first.push_back(500 + i);
  Submit(0, first);
  ASSERT_EQ(Step().context_parallel_size(), 1);  // 16 of 48
  ASSERT_EQ(Step().context_parallel_size(), 1);  // 16 of 32
  ASSERT_EQ(Step().context_parallel_size(), 0);  // 16 left: below 20
  EXPECT_EQ(replicas_[1]->blocks.num_cached_blocks(), 8);
  replicas_[0]->scheduler.RemoveAll();

  // A second prompt on the shared 24: its first chunk starts at 24 in its
  // home replica, and the other replica's copy adopts the same 24 cached.
  std::vector<int32_t> second = shared;
  for (int i = 0; i < 30; ++i) second.push_back(900 + i);
  Sequence* seq = Submit(0, second);
  const internal::v1::StepRequest step = Step();
  ASSERT_EQ(step.context_parallel_size(), 1);
  EXPECT_EQ(seq->num_computed, 24 + 16);
  ASSERT_EQ(step.sequences_size(), 1);
  const internal::v1::StepSequence& copy = step.sequences(0);
  EXPECT_EQ(copy.context_len(), 40);
  EXPECT_EQ(copy.token_ids_size(), 16);
  EXPECT_EQ(copy.new_blocks_size(), 10);  // the whole table: 6 adopted, 4 new
}

TEST_F(ContextParallelTest, AChunkRunsAloneWhereACopyCannotBeMade) {
  // Replica 0 has room for 3 blocks only.
  MakeReplicas({3, 40});
  Sequence* seq = Submit(1, Prompt(40, 1));
  internal::v1::StepRequest step = Step();
  EXPECT_EQ(step.context_parallel_size(), 0);
  EXPECT_EQ(step.sequences_size(), 0);
  EXPECT_EQ(seq->num_computed, 8);  // a chunk of one budget, in its own replica
  EXPECT_EQ(Referenced(), (std::vector<int64_t>{0, 2}));

  // Copies start with a prompt's first chunk or never.
  replicas_.clear();
  MakeReplicas({40, 40});
  seq = Submit(1, Prompt(60, 1));
  seq->tokens[0] = kPendingToken;  // a chunk with a token not known yet is not split either
  EXPECT_EQ(Step().context_parallel_size(), 0);
  EXPECT_EQ(seq->num_computed, 8);
  seq->tokens[0] = 1;
  EXPECT_EQ(Step().context_parallel_size(), 0);
  EXPECT_EQ(seq->num_computed, 16);
  EXPECT_EQ(Referenced()[0], 0);
}

TEST_F(ContextParallelTest, ReleaseAllFreesEveryCopy) {
  MakeReplicas({32, 32, 32});
  Submit(0, Prompt(50, 3));
  Submit(2, Prompt(60, 300));
  const internal::v1::StepRequest step = Step();
  EXPECT_EQ(step.context_parallel_size(), 2);
  EXPECT_EQ(cp_.num_split(), 2);
  cp_.ReleaseAll(replicas_);
  EXPECT_EQ(cp_.num_split(), 0);
  EXPECT_EQ(cp_.TakeReleased().size(), 2u);
  for (auto& r : replicas_) r->scheduler.RemoveAll();
  EXPECT_EQ(Referenced(), (std::vector<int64_t>{0, 0, 0}));
}

TEST(ReplicaStepTokensTest, SplitChunksShareTheGroupsStep) {
  EXPECT_EQ(ReplicaStepTokens(8192, 1, 4096), 8192);
  EXPECT_EQ(ReplicaStepTokens(8192, 8, 4096), 1024);
  EXPECT_EQ(ReplicaStepTokens(8192, 8, 0), 8192);  // never split: each replica its own steps
  EXPECT_EQ(ReplicaStepTokens(8192, 3, 4096), 2730);
  for (int replicas = 1; replicas <= 16; ++replicas) {
    // The worst step a replica profiles (a budget per replica) stays within the group's.
    EXPECT_LE(ReplicaStepTokens(8192, replicas, 1) * replicas, 8192);
  }
}

}  // namespace
}  // namespace mlaserve
