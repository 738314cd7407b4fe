#include "coordinator/serving/scheduler.h"

#include <map>
#include <optional>
#include <random>

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

const Tokenizer& TestTokenizer() {
  static const Tokenizer* tokenizer =
      Tokenizer::FromFile("tests/testdata/tiny-deepseek-v3/tokenizer.json").value().release();
  return *tokenizer;
}

std::unique_ptr<Sequence> MakeSeq(int64_t id, int64_t prompt_len, int32_t first_token = 1, int64_t max_tokens = 1000) {
  auto seq = std::make_unique<Sequence>();
  seq->id = id;
  for (int64_t i = 0; i < prompt_len; ++i) seq->tokens.push_back(first_token + static_cast<int32_t>(i));
  seq->prompt_len = prompt_len;
  seq->sampling.max_tokens = max_tokens;
  seq->detokenizer = std::make_unique<Detokenizer>(TestTokenizer(), std::vector<std::string>{});
  return seq;
}

std::vector<SampleSlot> SlotsOf(const std::vector<ScheduledSequence>& step) {
  std::vector<SampleSlot> slots;
  for (const ScheduledSequence& item : step) {
    if (item.sample) slots.push_back({item.seq->id, item.begin + item.num_tokens});
  }
  return slots;
}

Postprocessed Sample(Scheduler& s, const std::vector<SampleSlot>& slots, int32_t token = 7) {
  return s.Postprocess(slots, std::vector<int32_t>(slots.size(), token));
}

// Runs a step as the engine would without overlap: its tokens are known
// before the next step is scheduled.
void Complete(Scheduler& s, const std::vector<ScheduledSequence>& step) { Sample(s, SlotsOf(step)); }

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
  EXPECT_EQ(step[0].begin, 0);
  EXPECT_EQ(step[0].num_tokens, 8);  // its prompt and its output token
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

// The token the "model" samples for output index `i` of request `id`: any
// pure function will do, as long as every schedule must reproduce it.
int32_t TokenFor(int64_t id, int64_t i) { return static_cast<int32_t>(100 + (id * 37 + i * 11) % 500); }

std::vector<int32_t> TokensFor(absl::Span<const SampleSlot> slots, const std::map<int64_t, int64_t>& prompt_len) {
  std::vector<int32_t> tokens;
  for (const SampleSlot& slot : slots) tokens.push_back(TokenFor(slot.request_id, slot.position - prompt_len.at(slot.request_id)));
  return tokens;
}

TEST(SchedulerTest, OverlappedStepTakesTheUnknownSampleAsInput) {
  BlockManager blocks(64, 4);
  Scheduler s(blocks, {.max_num_seqs = 8, .max_batched_tokens = 100});
  s.Add(MakeSeq(1, 5));
  const auto first = s.Schedule();  // prefill, samples output 0
  ASSERT_EQ(first.size(), 1u);
  Sequence* seq = first[0].seq;
  EXPECT_EQ(seq->tokens.back(), kPendingToken);
  EXPECT_EQ(seq->pending_samples, 1);
  const auto second = s.Schedule();  // before output 0 is known: decodes it
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].begin, 5);
  EXPECT_EQ(second[0].num_tokens, 1);
  EXPECT_EQ(seq->tokens[5], kPendingToken);
  EXPECT_EQ(seq->pending_samples, 2);
  Postprocessed done = Sample(s, SlotsOf(first), 42);
  ASSERT_EQ(done.samples.size(), 1u);
  EXPECT_EQ(done.samples[0].reason, FinishReason::kNone);
  EXPECT_EQ(seq->tokens[5], 42);
  EXPECT_EQ(seq->tokens[6], kPendingToken);
  EXPECT_EQ(seq->num_known_output(), 1);
  Sample(s, SlotsOf(second), 43);
  EXPECT_EQ(seq->tokens, (std::vector<int32_t>{1, 2, 3, 4, 5, 42, 43}));
}

TEST(SchedulerTest, StopAtStepNDropsTheSpeculativeStepNPlusOne) {
  BlockManager blocks(64, 4);
  Scheduler s(blocks, {.max_num_seqs = 8, .max_batched_tokens = 100, .eos_token_ids = {2}});
  s.Add(MakeSeq(1, 3));
  const auto n = s.Schedule();
  n[0].seq->on_workers = true;  // as the engine group marks what it sends
  const auto n_plus_1 = s.Schedule();  // speculative: output 0 may be EOS
  ASSERT_EQ(n_plus_1.size(), 1u);
  Postprocessed done = Sample(s, SlotsOf(n), /*EOS*/ 2);
  ASSERT_EQ(done.finished.size(), 1u);
  EXPECT_EQ(done.samples[0].reason, FinishReason::kStop);
  EXPECT_EQ(done.finished[0]->tokens, (std::vector<int32_t>{1, 2, 3, 2}));  // no placeholder left
  EXPECT_EQ(done.finished[0]->num_output(), 1);
  EXPECT_EQ(s.TakeReleased(), std::vector<int64_t>{1});  // the workers may forget it
  // Step N+1's token is dropped: nothing to apply, nothing returned.
  EXPECT_TRUE(Sample(s, SlotsOf(n_plus_1)).samples.empty());
  EXPECT_EQ(blocks.num_referenced_blocks(), 0);
  EXPECT_TRUE(s.Schedule().empty());
}

TEST(SchedulerTest, ALaunchedLastSampleIsNotScheduledAgain) {
  BlockManager blocks(64, 4);
  Scheduler s(blocks, {.max_num_seqs = 8, .max_batched_tokens = 100});
  s.Add(MakeSeq(1, 3, 1, /*max_tokens=*/2));
  const auto a = s.Schedule();
  const auto b = s.Schedule();  // samples output 1, the last one
  ASSERT_EQ(b.size(), 1u);
  EXPECT_TRUE(s.Schedule().empty());  // nothing speculative past the length limit
  Sample(s, SlotsOf(a));
  Postprocessed done = Sample(s, SlotsOf(b));
  ASSERT_EQ(done.finished.size(), 1u);
  EXPECT_EQ(done.samples[0].reason, FinishReason::kLength);
  EXPECT_EQ(done.finished[0]->num_output(), 2);
}

TEST(SchedulerTest, PrefillOnlyStopsAfterTheFirstSample) {
  BlockManager blocks(64, 4);
  Scheduler s(blocks, {.max_num_seqs = 8, .max_batched_tokens = 100, .prefill_only = true});
  s.Add(MakeSeq(1, 6));
  const auto a = s.Schedule();
  EXPECT_TRUE(s.Schedule().empty());
  Sample(s, SlotsOf(a));
  std::unique_ptr<Sequence> seq = s.Remove(1);  // handed over
  EXPECT_EQ(seq->num_computed, 0);
  EXPECT_FALSE(seq->last_sample_launched);  // it goes on elsewhere
  EXPECT_EQ(seq->num_output(), 1);
}

TEST(SchedulerTest, CancelledWithASampleInFlightLeavesOnlyKnownTokens) {
  BlockManager blocks(64, 4);
  Scheduler s(blocks, {.max_num_seqs = 8, .max_batched_tokens = 100});
  s.Add(MakeSeq(1, 4));
  const auto a = s.Schedule();
  std::unique_ptr<Sequence> seq = s.Remove(1);
  EXPECT_EQ(seq->tokens, (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_TRUE(Sample(s, SlotsOf(a)).samples.empty());
  EXPECT_EQ(blocks.num_referenced_blocks(), 0);
}

// Random workloads run overlapped (step N+1 scheduled before step N's tokens
// are known), with preemption: every sequence's output is exactly what the
// token function gives, whatever the schedule, and no block is lost.
TEST(SchedulerTest, OverlappedRandomWorkloadsGiveExactOutputs) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 30; ++trial) {
    BlockManager blocks(10 + rng() % 20, 4);
    const int32_t stop = TokenFor(3, 4);  // request 3 stops at output 4, others may too
    Scheduler s(blocks, {.max_num_seqs = 1 + static_cast<int64_t>(rng() % 6),
                         .max_batched_tokens = 4 + static_cast<int64_t>(rng() % 40),
                         .eos_token_ids = {stop}});
    std::map<int64_t, int64_t> prompt_len, max_tokens;
    for (int64_t id = 0; id < 12; ++id) {
      prompt_len[id] = 1 + rng() % 16;
      max_tokens[id] = 1 + rng() % 12;
      s.Add(MakeSeq(id, prompt_len[id], 1000 + static_cast<int32_t>(rng() % 3) * 1000, max_tokens[id]));
    }
    std::map<int64_t, std::vector<int32_t>> outputs;
    std::optional<std::vector<SampleSlot>> in_flight;
    for (int iter = 0; iter < 10000 && outputs.size() < prompt_len.size(); ++iter) {
      const std::vector<ScheduledSequence> step = s.Schedule();
      const std::vector<SampleSlot> launched = SlotsOf(step);
      if (in_flight.has_value()) {
        Postprocessed done = s.Postprocess(*in_flight, TokensFor(*in_flight, prompt_len));
        for (const auto& seq : done.finished) {
          outputs[seq->id].assign(seq->tokens.begin() + seq->prompt_len, seq->tokens.end());
        }
      }
      ASSERT_TRUE(in_flight.has_value() || !step.empty()) << "stuck with " << s.num_waiting() << " waiting";
      in_flight.reset();
      if (!step.empty()) in_flight = launched;
      ASSERT_EQ(blocks.num_free_blocks() + blocks.num_evictable_blocks() + blocks.num_referenced_blocks(),
                blocks.num_blocks());
    }
    ASSERT_EQ(outputs.size(), prompt_len.size());
    for (const auto& [id, output] : outputs) {
      std::vector<int32_t> expected;
      for (int64_t i = 0; i < max_tokens[id]; ++i) {
        expected.push_back(TokenFor(id, i));
        if (expected.back() == stop) break;
      }
      EXPECT_EQ(output, expected) << "request " << id;
    }
    EXPECT_EQ(blocks.num_referenced_blocks(), 0);
  }
}

}  // namespace
}  // namespace mlaserve
