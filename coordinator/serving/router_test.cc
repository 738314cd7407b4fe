#include "coordinator/serving/router.h"

#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "coordinator/serving/engine_group.h"
#include "tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace mlaserve {
namespace {

constexpr int64_t kBlockSize = 4;

// Workers whose steps never come back (until the group stops): a submitted
// sequence stays running, so a group's load is what the test submits.
class StalledWorkers final : public StepExecutor {
 public:
  absl::Status Launch(const internal::v1::StepRequest&) override { return absl::OkStatus(); }
  absl::StatusOr<std::vector<internal::v1::StepResponse>> Collect() override {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(+[](absl::Status* s) { return !s->ok(); }, &aborted_));
    return aborted_;
  }
  void Abort(const absl::Status& why) override {
    absl::MutexLock lock(&mu_);
    if (aborted_.ok()) aborted_ = why;
  }

 private:
  absl::Mutex mu_;
  absl::Status aborted_ ABSL_GUARDED_BY(mu_);
};

class RouterTest : public ::testing::Test {
 protected:
  RouterTest() {
    config_.vocab_size = 1000;
    config_.max_position_embeddings = 4096;
    config_.eos_token_ids = {1};
  }

  EngineGroup* AddGroup(GroupRole role = GroupRole::kMixed, int dp_attention = 1) {
    GroupOptions options;
    options.role = role;
    options.dp_attention = dp_attention;
    options.num_blocks = 64;
    options.block_size = kBlockSize;
    options.scheduler = {.max_num_seqs = 8, .max_batched_tokens = 64};
    const int32_t id = static_cast<int32_t>(groups_.size());
    groups_.push_back(std::make_unique<EngineGroup>(id, std::vector<WorkerInfo>{WorkerInfo{.id = id}},
                                                    std::make_unique<StalledWorkers>(), options, config_, metrics_));
    pointers_.push_back(groups_.back().get());
    return pointers_.back();
  }

  // Enters the first `blocks` whole blocks of `prompt` into `group`'s prefix
  // cache, as a finished request would have left them.
  static void Cache(EngineGroup* group, const std::vector<int32_t>& prompt, int64_t blocks) {
    absl::StatusOr<BlockHold> hold = group->Reserve(blocks);
    ASSERT_TRUE(hold.ok()) << hold.status();
    group->CommitPrefix(*hold, prompt);
    group->Release(*hold);
  }

  // Makes `group` busier by `n` running requests.
  void Load(EngineGroup* group, int n) {
    for (int i = 0; i < n; ++i) {
      auto seq = std::make_unique<Sequence>();
      seq->id = next_id_++;
      seq->tokens = {900, 901, static_cast<int32_t>(next_id_ % 500)};
      seq->prompt_len = 3;
      seq->sampling.max_tokens = 4;
      seq->detokenizer = std::make_unique<Detokenizer>(*tokenizer_, std::vector<std::string>{});
      seq->on_update = [](const GenerateUpdate&) {};
      group->Submit(std::move(seq));
    }
  }

  static std::vector<int32_t> Prompt(int64_t n, int32_t first = 100) {
    std::vector<int32_t> out(n);
    for (int64_t i = 0; i < n; ++i) out[i] = first + static_cast<int32_t>(i);
    return out;
  }

  const std::unique_ptr<Tokenizer> tokenizer_ =
      Tokenizer::FromFile("tests/testdata/tiny-deepseek-v3/tokenizer.json").value();
  ModelConfig config_;
  ServingMetrics metrics_;
  std::vector<std::unique_ptr<EngineGroup>> groups_;
  std::vector<EngineGroup*> pointers_;
  int64_t next_id_ = 1;
};

TEST_F(RouterTest, TheGroupCachingTheLongestPrefixWinsWithinTheSlack) {
  Router router({.cache_affinity_slack = 2});
  EngineGroup* a = AddGroup();
  EngineGroup* b = AddGroup();
  const std::vector<int32_t> prompt = Prompt(13);
  Cache(a, prompt, 1);
  Cache(b, prompt, 3);
  Load(b, 2);
  const Route<EngineGroup> route = router.Choose(pointers_, prompt);
  EXPECT_EQ(route.group, b);
  EXPECT_EQ(route.placement.cached_tokens(), 3 * kBlockSize);
  EXPECT_EQ(route.donor, nullptr);
}

TEST_F(RouterTest, ABusierCachingGroupLosesToTheLeastLoadedAndBecomesTheDonor) {
  Router router({.cache_affinity_slack = 2});
  EngineGroup* a = AddGroup();
  EngineGroup* b = AddGroup();
  const std::vector<int32_t> prompt = Prompt(13);
  Cache(a, prompt, 1);
  Cache(b, prompt, 3);
  Load(b, 3);
  const Route<EngineGroup> route = router.Choose(pointers_, prompt);
  EXPECT_EQ(route.group, a);
  EXPECT_EQ(route.placement.cached_tokens(), kBlockSize);
  EXPECT_EQ(route.donor, b);
  EXPECT_EQ(route.donor_tokens, 3 * kBlockSize);
}

TEST_F(RouterTest, ThePlacementNamesTheReplicaHoldingThePrefix) {
  Router router({});
  EngineGroup* group = AddGroup(GroupRole::kMixed, /*dp_attention=*/2);
  const std::vector<int32_t> prompt = Prompt(9);
  Load(group, 1);  // replica 0 busier: Reserve picks replica 1
  Cache(group, prompt, 2);
  const Route<EngineGroup> route = router.Choose(pointers_, prompt);
  EXPECT_EQ(route.group, group);
  EXPECT_EQ(route.placement.replica, 1);
  EXPECT_EQ(route.placement.cached_tokens(), 2 * kBlockSize);
  // The last token is never served from the cache: it must be computed.
  const Route<EngineGroup> whole = router.Choose(pointers_, Prompt(8));
  EXPECT_EQ(whole.placement.cached_tokens(), kBlockSize);
}

TEST_F(RouterTest, NewRequestsStartInPrefillGroupsAndMovesGoToDecodeGroups) {
  Router router({});
  EngineGroup* prefill = AddGroup(GroupRole::kPrefill);
  EngineGroup* decode_busy = AddGroup(GroupRole::kDecode);
  EngineGroup* decode_idle = AddGroup(GroupRole::kDecode);
  Load(prefill, 3);
  Load(decode_busy, 1);
  EXPECT_EQ(router.Choose(pointers_, Prompt(5)).group, prefill);
  EXPECT_EQ(Router::ChooseMoveDestination(pointers_, prefill), decode_idle);
  EXPECT_EQ(Router::ChooseMoveDestination(pointers_, decode_idle), decode_busy);
}

TEST_F(RouterTest, RequestsOnTheirWayCountAsLoad) {
  // Hand-offs claimed at once (their KV still moving) spread over the decode
  // groups instead of all going to the one that was idle when they left.
  Router router({});
  EngineGroup* prefill = AddGroup(GroupRole::kPrefill);
  EngineGroup* decode_a = AddGroup(GroupRole::kDecode);
  EngineGroup* decode_b = AddGroup(GroupRole::kDecode);
  EngineGroup* first = Router::ChooseMoveDestination(pointers_, prefill);
  first->ExpectArrival();
  EXPECT_EQ(first->load(), 1);
  EngineGroup* second = Router::ChooseMoveDestination(pointers_, prefill);
  EXPECT_NE(first, second);
  EXPECT_TRUE((first == decode_a && second == decode_b) || (first == decode_b && second == decode_a));
  first->Arrived();
  EXPECT_EQ(first->load(), 0);
}

TEST_F(RouterTest, APrefillGroupWithoutDecodeGroupsKeepsItsSequences) {
  EngineGroup* prefill = AddGroup(GroupRole::kPrefill);
  EXPECT_EQ(Router::ChooseMoveDestination(pointers_, prefill), prefill);
  EngineGroup* other_prefill = AddGroup(GroupRole::kPrefill);
  EXPECT_EQ(Router::ChooseMoveDestination(pointers_, other_prefill), other_prefill);
}

TEST_F(RouterTest, NoLiveGroupRoutesNowhere) {
  Router router({});
  EngineGroup* a = AddGroup();
  a->Fail(absl::UnavailableError("worker died"));
  EXPECT_EQ(router.Choose(pointers_, Prompt(5)).group, nullptr);
  EXPECT_EQ(Router::ChooseMoveDestination(pointers_, a), nullptr);
}

TEST(RouterCostModelTest, MigrationFollowsThePolicyAndTheCalibratedCosts) {
  EXPECT_TRUE(Router({.migration = MigrationPolicy::kAlways}).ShouldMigrate(10, 64));
  EXPECT_FALSE(Router({.migration = MigrationPolicy::kNever}).ShouldMigrate(10, 64));
  Router router({.migration = MigrationPolicy::kAuto});
  EXPECT_TRUE(router.ShouldMigrate(10, 64)) << "uncalibrated: latent KV is small, moving is the better bet";
  // 10 blocks of 64 tokens, 1 MB each: 10 MB. At 1 GB/s that is 10 ms; the
  // 640 tokens take 64 ms at 10K tokens/s to recompute, 0.64 ms at 1M.
  router.Calibrate(1e9, 1e4, 1'000'000);
  EXPECT_TRUE(router.ShouldMigrate(10, 64));
  router.Calibrate(1e9, 1e6, 1'000'000);
  EXPECT_FALSE(router.ShouldMigrate(10, 64));
}

}  // namespace
}  // namespace mlaserve
