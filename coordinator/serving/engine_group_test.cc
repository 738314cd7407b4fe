// The engine loop without processes: a fake executor stands in for the
// workers. It keeps each sequence's state from the step deltas exactly as a
// worker does (so the deltas are checked too) and samples a pure function of
// (request, output index), so every output is known in advance whatever the
// schedule, overlap or preemption.
#include "coordinator/serving/engine_group.h"

#include <algorithm>
#include <deque>
#include <map>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace mlaserve {
namespace {

constexpr int32_t kEos = 1;

int32_t TokenFor(int64_t id, int64_t i) { return static_cast<int32_t>(100 + (id * 37 + i * 11) % 500); }

class FakeWorkers final : public StepExecutor {
 public:
  absl::Status Launch(const internal::v1::StepRequest& step) override {
    absl::MutexLock lock(&mu_);
    if (!failure_.ok()) return failure_;
    ++launched_;
    pending_.push_back(Run(step));
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<internal::v1::StepResponse>> Collect() override {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](FakeWorkers* f) { return f->open_ || !f->failure_.ok(); }, this));
    if (!failure_.ok()) return failure_;
    if (fail_next_) {
      failure_ = absl::UnavailableError("worker died");
      return failure_;
    }
    auto out = std::move(pending_.front());
    pending_.pop_front();
    if (!out.ok()) failure_ = out.status();
    if (collects_left_ > 0 && --collects_left_ == 0) open_ = false;
    return out;
  }

  void Abort(const absl::Status& why) override {
    absl::MutexLock lock(&mu_);
    if (failure_.ok()) failure_ = why;
  }

  // Collect waits while closed.
  void SetOpen(bool open) {
    absl::MutexLock lock(&mu_);
    open_ = open;
  }
  // Closes after `collects` more steps complete: a test can act between
  // steps however fast the fake runs.
  void CloseAfter(int64_t collects) {
    absl::MutexLock lock(&mu_);
    collects_left_ = collects;
  }
  // Waits (bounded) until CloseAfter's count has run out; false on timeout.
  bool WaitClosed() {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(+[](bool* open) { return !*open; }, &open_), absl::Seconds(10));
  }
  void FailNextCollect() {
    absl::MutexLock lock(&mu_);
    fail_next_ = true;
  }
  int64_t launched() {
    absl::MutexLock lock(&mu_);
    return launched_;
  }
  // The highest output index sampled for `id`, -1 if none.
  int64_t last_sample_index(int64_t id) {
    absl::MutexLock lock(&mu_);
    return last_index_.count(id) ? last_index_[id] : -1;
  }

 private:
  struct State {
    int64_t context_len = 0;
    int64_t blocks = 0;
    int32_t last_sample = -1;
  };

  absl::StatusOr<std::vector<internal::v1::StepResponse>> Run(const internal::v1::StepRequest& step)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (int64_t id : step.released()) states_.erase(id);
    internal::v1::StepResponse response;
    response.set_step_id(step.step_id());
    for (const internal::v1::StepSequence& s : step.sequences()) {
      if (s.start()) states_[s.request_id()] = State();
      auto it = states_.find(s.request_id());
      if (it == states_.end()) return absl::InvalidArgumentError(absl::StrCat("unknown ", s.request_id()));
      State& state = it->second;
      state.blocks += s.new_blocks_size();
      int64_t n = s.token_ids_size();
      if (s.sampled_input()) {
        if (n != 0 || state.last_sample < 0) return absl::InvalidArgumentError("sampled input without a sample");
        n = 1;
      }
      for (int32_t t : s.token_ids()) {
        if (t < 0) return absl::InvalidArgumentError("placeholder token sent");
      }
      if (s.start()) state.context_len = std::max<int64_t>(0, s.context_len() - n);  // after a cached prefix
      state.context_len += n;
      if (n == 0 || state.context_len != s.context_len() || state.context_len > state.blocks * 4) {
        return absl::InvalidArgumentError(absl::StrCat("request ", s.request_id(), ": bad delta"));
      }
      if (!s.sample()) continue;
      state.last_sample = TokenFor(s.request_id(), s.sample_index());
      last_index_[s.request_id()] = std::max<int64_t>(last_index_[s.request_id()], s.sample_index());
      response.add_sampled_token_ids(state.last_sample);
      response.add_logprobs();
    }
    return std::vector<internal::v1::StepResponse>{response};
  }

  absl::Mutex mu_;
  std::map<int64_t, State> states_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, int64_t> last_index_ ABSL_GUARDED_BY(mu_);
  std::deque<absl::StatusOr<std::vector<internal::v1::StepResponse>>> pending_ ABSL_GUARDED_BY(mu_);
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  bool open_ ABSL_GUARDED_BY(mu_) = true;
  bool fail_next_ ABSL_GUARDED_BY(mu_) = false;
  int64_t collects_left_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t launched_ ABSL_GUARDED_BY(mu_) = 0;
};

// What one request has received.
struct Received {
  std::vector<int32_t> tokens;
  FinishReason reason = FinishReason::kNone;
  absl::Status error;
  int32_t completion_tokens = 0;
};

class EngineGroupTest : public ::testing::Test {
 protected:
  EngineGroupTest() {
    config_.vocab_size = 1000;
    config_.max_position_embeddings = 4096;
    config_.eos_token_ids = {kEos};
  }

  void Start(int64_t num_blocks, GroupRole role = GroupRole::kMixed, int64_t max_num_seqs = 8) {
    auto fake = std::make_unique<FakeWorkers>();
    fake_ = fake.get();
    GroupOptions options;
    options.role = role;
    options.num_blocks = num_blocks;
    options.block_size = 4;
    options.scheduler = {.max_num_seqs = max_num_seqs, .max_batched_tokens = 32};
    options.trace = trace_.get();
    group_ = std::make_unique<EngineGroup>(1, std::vector<WorkerInfo>{WorkerInfo{.id = 1}}, std::move(fake),
                                           options, config_, metrics_);
  }

  void Submit(int64_t id, int64_t prompt_len, int32_t max_tokens, std::vector<int32_t> stop_ids = {}) {
    auto seq = std::make_unique<Sequence>();
    seq->id = id;
    for (int64_t i = 0; i < prompt_len; ++i) seq->tokens.push_back(static_cast<int32_t>(500 + (id + i) % 400));
    seq->prompt_len = prompt_len;
    seq->sampling.max_tokens = max_tokens;
    seq->sampling.stop_token_ids = std::move(stop_ids);
    seq->detokenizer = std::make_unique<Detokenizer>(*tokenizer_, std::vector<std::string>{});
    seq->arrival = absl::Now();
    seq->on_update = [this, id](const GenerateUpdate& update) {
      absl::MutexLock lock(&mu_);
      Received& r = received_[id];
      r.tokens.insert(r.tokens.end(), update.token_ids.begin(), update.token_ids.end());
      if (update.finished()) {
        r.reason = update.finish_reason;
        r.error = update.error;
        r.completion_tokens = update.completion_tokens;
      }
    };
    group_->Submit(std::move(seq));
  }

  // Waits (bounded) until `done` holds for what was received.
  bool WaitFor(const std::function<bool(const std::map<int64_t, Received>&)>& done) {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      {
        absl::MutexLock lock(&mu_);
        if (done(received_)) return true;
      }
      absl::SleepFor(absl::Milliseconds(1));
    }
    return false;
  }
  bool WaitFinished(size_t n) {
    return WaitFor([n](const std::map<int64_t, Received>& r) {
      size_t finished = 0;
      for (const auto& [id, got] : r) finished += got.reason != FinishReason::kNone;
      return finished == n;
    });
  }
  Received Get(int64_t id) {
    absl::MutexLock lock(&mu_);
    return received_[id];
  }
  // Every block of the pool is free (or evictable) again.
  void ExpectAllBlocksFree(int64_t num_blocks) {
    absl::StatusOr<BlockHold> all = group_->Reserve(num_blocks);
    ASSERT_TRUE(all.ok()) << all.status();
    group_->Release(*all);
  }

  static std::vector<int32_t> Expected(int64_t id, int64_t max_tokens, int32_t stop = -2) {
    std::vector<int32_t> out;
    for (int64_t i = 0; i < max_tokens; ++i) {
      out.push_back(TokenFor(id, i));
      if (out.back() == stop || out.back() == kEos) break;
    }
    return out;
  }

  const std::unique_ptr<Tokenizer> tokenizer_ =
      Tokenizer::FromFile("tests/testdata/tiny-deepseek-v3/tokenizer.json").value();
  ModelConfig config_;
  ServingMetrics metrics_;
  FakeWorkers* fake_ = nullptr;
  absl::Mutex mu_;
  std::map<int64_t, Received> received_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<StepTrace> trace_;  // recorded into when set before Start
  std::unique_ptr<EngineGroup> group_;
};

TEST_F(EngineGroupTest, OutputsAreExactUnderOverlapAndPreemption) {
  Start(/*num_blocks=*/12);  // 48 token slots for 10 requests of up to 40: preemption
  for (int64_t id = 0; id < 10; ++id) Submit(id, 3 + id % 7, static_cast<int32_t>(5 + (id * 7) % 25));
  ASSERT_TRUE(WaitFinished(10));
  for (int64_t id = 0; id < 10; ++id) {
    const Received r = Get(id);
    EXPECT_EQ(r.tokens, Expected(id, 5 + (id * 7) % 25)) << "request " << id;
    EXPECT_EQ(r.reason, FinishReason::kLength);
    EXPECT_EQ(r.completion_tokens, static_cast<int32_t>(r.tokens.size()));
  }
  ExpectAllBlocksFree(12);
}

TEST_F(EngineGroupTest, TraceRecordsEveryStepItsShape) {
  const std::string path = ::testing::TempDir() + "/engine_group_trace.csv";
  trace_ = StepTrace::Create(path).value();
  Start(64);
  Submit(3, 10, 5);
  ASSERT_TRUE(WaitFinished(1));
  group_.reset();
  absl::StatusOr<std::vector<StepSample>> steps = ReadStepTrace(path);
  ASSERT_TRUE(steps.ok()) << steps.status();
  // The 10-token prompt in one chunk, then the 4 decodes that feed samples
  // 2 to 5: the last sample is known to be the last, so no step follows it.
  ASSERT_EQ(steps->size(), 5u);
  EXPECT_EQ((*steps)[0].shape.prefill_tokens, 10);
  EXPECT_EQ((*steps)[0].shape.max_replica_attended, 55);
  for (size_t i = 1; i < steps->size(); ++i) {
    EXPECT_EQ((*steps)[i].shape.tokens, 1);
    EXPECT_EQ((*steps)[i].shape.max_replica_attended, static_cast<int64_t>(10 + i));
  }
  for (const StepSample& step : *steps) {
    EXPECT_EQ(step.group, 1);
    EXPECT_EQ(step.workers, 1);
    EXPECT_GE(step.seconds, 0);
  }
}

TEST_F(EngineGroupTest, StopAtStepNWithStepNPlusOneInFlightWastesOneStepAndNoToken) {
  Start(64);
  const int32_t stop = TokenFor(7, 3);
  Submit(7, 5, 100, {stop});
  ASSERT_TRUE(WaitFinished(1));
  const Received r = Get(7);
  EXPECT_EQ(r.tokens, Expected(7, 100, stop));
  EXPECT_EQ(r.tokens.size(), 4u);
  EXPECT_EQ(r.reason, FinishReason::kStop);
  EXPECT_LE(fake_->last_sample_index(7), 4);  // at most one speculative step past the stop
  ExpectAllBlocksFree(64);
}

TEST_F(EngineGroupTest, CancelMidStepEndsTheRequestAndFreesItsBlocks) {
  Start(64);
  fake_->SetOpen(false);  // steps launch, none completes
  Submit(3, 6, 50);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (fake_->launched() < 1 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_GE(fake_->launched(), 1);
  group_->Cancel(3);
  fake_->SetOpen(true);
  ASSERT_TRUE(WaitFinished(1));
  const Received r = Get(3);
  EXPECT_EQ(r.reason, FinishReason::kAbort);
  EXPECT_EQ(r.completion_tokens, static_cast<int32_t>(r.tokens.size()));
  ExpectAllBlocksFree(64);
}

TEST_F(EngineGroupTest, DrainMovesOutSequencesWithKnownTokensOnly) {
  Start(64);
  absl::Mutex moved_mu;
  std::vector<std::unique_ptr<Sequence>> moved;
  group_->SetMoveCallback([&](std::unique_ptr<Sequence> seq, BlockHold hold) {
    group_->Release(hold);
    absl::MutexLock lock(&moved_mu);
    moved.push_back(std::move(seq));
  });
  fake_->SetOpen(false);  // all four arrive before the second step
  for (int64_t id = 0; id < 4; ++id) Submit(id, 6, 200);
  fake_->CloseAfter(8);  // then a step stays in flight while the group drains
  fake_->SetOpen(true);
  ASSERT_TRUE(WaitFor([](const auto& r) { return r.size() == 4 && r.at(3).tokens.size() >= 3; }));
  ASSERT_TRUE(fake_->WaitClosed());  // reopened before the count ran out, it would close on the drain
  group_->Drain();
  fake_->SetOpen(true);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!group_->drained() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_TRUE(group_->drained());
  absl::MutexLock lock(&moved_mu);
  ASSERT_EQ(moved.size(), 4u);
  for (const auto& seq : moved) {
    const Received r = Get(seq->id);
    EXPECT_EQ(r.reason, FinishReason::kNone);  // it goes on elsewhere
    const std::vector<int32_t> output(seq->tokens.begin() + seq->prompt_len, seq->tokens.end());
    EXPECT_EQ(output, r.tokens) << "request " << seq->id << ": the sequence carries exactly what was streamed";
    EXPECT_EQ(seq->pending_samples, 0);
  }
}

// A cancel that lands after the loop moved a sequence out but before the
// callback thread handed it to the mover ends it there, with its blocks freed.
TEST_F(EngineGroupTest, CancelWhileMovingOutEndsTheRequest) {
  Start(64);
  absl::Mutex moved_mu;
  std::vector<int64_t> moved;
  group_->SetMoveCallback([&](std::unique_ptr<Sequence> seq, BlockHold hold) {
    group_->Release(hold);
    absl::MutexLock lock(&moved_mu);
    moved.push_back(seq->id);
  });
  // Request 9's first update holds the callback thread until released.
  absl::Notification entered, release;
  auto blocker = std::make_unique<Sequence>();
  blocker->id = 9;
  blocker->tokens = {700, 701, 702};
  blocker->prompt_len = 3;
  blocker->sampling.max_tokens = 200;
  blocker->detokenizer = std::make_unique<Detokenizer>(*tokenizer_, std::vector<std::string>{});
  blocker->on_update = [&](const GenerateUpdate&) {
    if (entered.HasBeenNotified()) return;
    entered.Notify();
    release.WaitForNotification();
  };
  fake_->SetOpen(false);
  for (int64_t id = 0; id < 3; ++id) Submit(id, 6, 200);
  group_->Submit(std::move(blocker));
  fake_->CloseAfter(3);
  fake_->SetOpen(true);
  // However the test ends, the callback thread goes free (the group's
  // destructor waits for it).
  const absl::Cleanup unblock = [&release] {
    if (!release.HasBeenNotified()) release.Notify();
  };
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(fake_->WaitClosed());
  group_->Drain();
  fake_->SetOpen(true);  // the step in flight comes back; then everything moves out
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (group_->load() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_EQ(group_->load(), 0) << "every sequence moved out, none delivered yet";
  EXPECT_FALSE(group_->drained()) << "moves still on their way";
  group_->Cancel(1);
  release.Notify();
  ASSERT_TRUE(WaitFor([](const auto& r) { return r.count(1) && r.at(1).reason == FinishReason::kAbort; }));
  while (!group_->drained() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_TRUE(group_->drained());
  absl::MutexLock lock(&moved_mu);
  std::sort(moved.begin(), moved.end());
  EXPECT_EQ(moved, (std::vector<int64_t>{0, 2, 9}));
  // A drained group takes no reservations: its gauges tell that every block
  // came back (the moved ones released by the callback above).
  EXPECT_NE(metrics_.Serialize().find("mlaserve_kv_blocks_used{group=\"1\"} 0\n"), std::string::npos)
      << metrics_.Serialize();
}

TEST_F(EngineGroupTest, PrefillGroupMovesSequencesOutAfterTheFirstTokenWithoutSpeculating) {
  Start(64, GroupRole::kPrefill);
  absl::Mutex moved_mu;
  std::vector<std::pair<std::unique_ptr<Sequence>, size_t>> moved;  // with its held blocks
  group_->SetMoveCallback([&](std::unique_ptr<Sequence> seq, BlockHold hold) {
    group_->Release(hold);
    absl::MutexLock lock(&moved_mu);
    moved.emplace_back(std::move(seq), hold.blocks.size());
  });
  for (int64_t id = 0; id < 3; ++id) Submit(id, 9, 20);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    {
      absl::MutexLock lock(&moved_mu);
      if (moved.size() == 3) break;
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  absl::MutexLock lock(&moved_mu);
  ASSERT_EQ(moved.size(), 3u);
  for (const auto& [seq, held] : moved) {
    EXPECT_EQ(seq->num_output(), 1);
    EXPECT_EQ(seq->tokens.back(), TokenFor(seq->id, 0));
    EXPECT_EQ(held, 2u);  // the 9 prompt tokens' whole blocks
    EXPECT_EQ(fake_->last_sample_index(seq->id), 0);
  }
}

TEST_F(EngineGroupTest, AFailedStepEndsEveryRequestWithTheError) {
  Start(64);
  fake_->FailNextCollect();
  for (int64_t id = 0; id < 3; ++id) Submit(id, 4, 10);
  ASSERT_TRUE(WaitFinished(3));
  for (int64_t id = 0; id < 3; ++id) {
    const Received r = Get(id);
    EXPECT_EQ(r.reason, FinishReason::kError);
    EXPECT_TRUE(absl::IsUnavailable(r.error)) << r.error;
  }
  EXPECT_FALSE(group_->alive());
}

}  // namespace
}  // namespace mlaserve
