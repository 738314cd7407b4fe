// Latent KV migration end to end on the CPU, through real processes: a prefix
// computed on one engine group served from another, prefill/decode
// disaggregation, draining a worker under load, and a source killed in the
// middle of a transfer. Outputs must be exactly those of one worker.
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/local_cluster.h"
#include "tests/serving_client.h"

namespace mlaserve {
namespace {

Oracle& SharedOracle() {
  static Oracle* oracle = new Oracle();
  return *oracle;
}

// Occupies the first group (ties go to it) so that routing prefers the other.
std::thread BusyFirstGroup(const LocalCluster& cluster, GrpcOutput* out, int tokens) {
  std::thread busy([&cluster, out, tokens] { *out = GenerateGrpc(cluster, {3, 1, 4, 1, 5}, tokens); });
  absl::SleepFor(absl::Milliseconds(300));
  return busy;
}

// Groups of one worker, and groups of two tensor-parallel ranks (the blocks
// cross between groups once and fan out to the second rank).
class PrefixMigrationTest : public ::testing::TestWithParam<int> {};

TEST_P(PrefixMigrationTest, PrefixComputedOnAnotherGroupIsMovedAndServesTheSameOutput) {
  const int tp = GetParam();
  auto cluster = LocalCluster::Start(kTinyModelDir, 2 * tp,
                                     {"--cache_affinity_slack=0", "--migration=always", absl::StrCat("--tp=", tp)});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::mt19937 rng(std::random_device{}());
  const std::vector<int32_t> prefix = RandomPrompt(rng, 200);
  ASSERT_TRUE(GenerateGrpc(**cluster, prefix, 1).status.ok());  // cached on the first group

  GrpcOutput busy_out;
  std::thread busy = BusyFirstGroup(**cluster, &busy_out, 300);
  std::vector<int32_t> prompt = prefix;
  for (int32_t id : RandomPrompt(rng, 21)) prompt.push_back(id);
  const GrpcOutput out = GenerateGrpc(**cluster, prompt, 8);
  busy.join();
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.ids, SharedOracle().Greedy(prompt, 8));
  // 3 whole blocks of 64 moved, and the second group served them as cached.
  EXPECT_EQ(out.usage.cached_prompt_tokens(), 192);
  EXPECT_EQ((*cluster)->Metric("mlaserve_remote_prefix_tokens_total", "outcome=\"migrated\""), 192);
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_transfer_blocks_total"), 3);
  EXPECT_GT((*cluster)->Metric("mlaserve_kv_transfer_bytes_total"), 0);
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_blocks_used"), 0);
}

INSTANTIATE_TEST_SUITE_P(GroupSizes, PrefixMigrationTest, ::testing::Values(1, 2),
                         [](const ::testing::TestParamInfo<int>& info) { return absl::StrCat("tp", info.param); });

TEST(MigrationTest, DisaggregatedServingReturnsTheColocatedOutputs) {
  auto cluster = LocalCluster::Start(kTinyModelDir, 2, {"--roles=prefill:1,decode:1"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::mt19937 rng(std::random_device{}());
  std::vector<std::vector<int32_t>> prompts(8);
  for (auto& p : prompts) p = RandomPrompt(rng, 1 + rng() % 150);
  ExpectOraclesGreedy(SharedOracle(), prompts, GenerateConcurrently(**cluster, prompts, 12), 12);
  EXPECT_EQ((*cluster)->Metric("mlaserve_sequences_moved_total", "reason=\"disaggregation\""), 8);
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_blocks_used"), 0);
}

// A long prompt prefilled context-parallel over the prefill group's two
// attention replicas lands, whole, where it decodes: its home replica's copy
// moves to the decode group, and the outputs are one worker's.
TEST(MigrationTest, ContextParallelPrefillHandsItsWholeKvToTheDecodeGroup) {
  auto cluster = LocalCluster::Start(kTinyModelDir, 4,
                                     {"--roles=prefill:1,decode:1", "--tp=1", "--dp_attention=2", "--ep=2",
                                      "--context_parallel_min_tokens=64", "--max_batched_tokens=64"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::mt19937 rng(std::random_device{}());
  std::vector<std::vector<int32_t>> prompts(4);
  for (auto& p : prompts) p = RandomPrompt(rng, 300 + rng() % 200);
  ExpectOraclesGreedy(SharedOracle(), prompts, GenerateConcurrently(**cluster, prompts, 12), 12);
  EXPECT_GT((*cluster)->Metric("mlaserve_context_parallel_chunks_total"), 0) << "no prompt was split";
  EXPECT_EQ((*cluster)->Metric("mlaserve_sequences_moved_total", "reason=\"disaggregation\""), prompts.size());
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_transfer_failures_total"), 0);
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_blocks_used"), 0);
}

// With an FP8 cache the prefill group's bytes move to the decode group as they
// are (the values a one-worker FP8 cache would hold), blocks of the FP8 pool's
// size: a byte a value over TCP too.
TEST(MigrationTest, DisaggregatedServingOverAnFp8CacheReturnsTheOneWorkerOutputs) {
  auto cluster = LocalCluster::Start(kTinyModelDir, 2, {"--roles=prefill:1,decode:1", "--kv_cache_dtype=fp8"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  static Oracle* fp8_oracle = new Oracle(KvCacheDtype::kFp8);
  std::mt19937 rng(std::random_device{}());
  for (int i = 0; i < 4; ++i) {
    const std::vector<int32_t> prompt = RandomPrompt(rng, 1 + rng() % 150);
    const GrpcOutput out = GenerateGrpc(**cluster, prompt, 12);
    ASSERT_TRUE(out.status.ok()) << out.status.error_message();
    EXPECT_EQ(out.ids, fp8_oracle->Greedy(prompt, 12)) << "request " << i;
  }
  const double blocks = (*cluster)->Metric("mlaserve_kv_transfer_blocks_total");
  ASSERT_GT(blocks, 0);
  const ModelConfig config = *LoadModelConfig(absl::StrCat(kTinyModelDir, "/config.json"));
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_transfer_bytes_total"),
            blocks * KvBlockBytes(config, 64, DType::kF32, KvCacheDtype::kFp8));
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_blocks_used"), 0);
}

// With --kv_links=all the CPU workers move KV over Gloo links, made before
// the first request: the prefill replica's first rank into the decode
// replica's, and that on into its second rank at --tp=2. No transfer makes
// one of its own, outputs are one worker's, and each block crosses as its
// bytes: 4 a value in a float cache, 1 in an FP8 one.
struct LinkCase {
  int tp;
  KvCacheDtype kv_dtype;
};

class LinkedDisaggregationTest : public ::testing::TestWithParam<LinkCase> {};

TEST_P(LinkedDisaggregationTest, LinksAreMadeAtStartAndCarryTheOneWorkerOutputs) {
  const auto [tp, kv_dtype] = GetParam();
  const bool fp8 = kv_dtype == KvCacheDtype::kFp8;
  auto cluster = LocalCluster::Start(kTinyModelDir, 2 * tp,
                                     {"--roles=prefill:1,decode:1", "--kv_links=all", absl::StrCat("--tp=", tp),
                                      absl::StrCat("--kv_cache_dtype=", fp8 ? "fp8" : "auto")});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_links_total", "when=\"start\""), tp);
  static Oracle* fp8_oracle = new Oracle(KvCacheDtype::kFp8);
  Oracle& oracle = fp8 ? *fp8_oracle : SharedOracle();
  std::mt19937 rng(std::random_device{}());
  std::vector<std::vector<int32_t>> prompts(6);
  for (auto& p : prompts) p = RandomPrompt(rng, 1 + rng() % 150);
  ExpectOraclesGreedy(oracle, prompts, GenerateConcurrently(**cluster, prompts, 12), 12);
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_links_total", "when=\"first_use\""), 0);
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_transfer_failures_total"), 0);
  const double blocks = (*cluster)->Metric("mlaserve_kv_transfer_blocks_total");
  ASSERT_GT(blocks, 0);
  const ModelConfig config = *LoadModelConfig(absl::StrCat(kTinyModelDir, "/config.json"));
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_transfer_bytes_total"),
            blocks * KvBlockBytes(config, 64, DType::kF32, kv_dtype));
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_blocks_used"), 0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinkedDisaggregationTest,
                         ::testing::Values(LinkCase{1, KvCacheDtype::kStorage}, LinkCase{2, KvCacheDtype::kStorage},
                                           LinkCase{1, KvCacheDtype::kFp8}),
                         [](const ::testing::TestParamInfo<LinkCase>& info) {
                           return absl::StrCat("tp", info.param.tp,
                                               info.param.kv_dtype == KvCacheDtype::kFp8 ? "_fp8" : "");
                         });

// A client hanging up while its sequence moves from the prefill group to the
// decode group (a slow transfer keeps it on the way) cancels it on arrival.
TEST(MigrationTest, CancelledWhileMovingEndsOnArrival) {
  auto cluster = LocalCluster::Start(kTinyModelDir, 2, {"--roles=prefill:1,decode:1"},
                                     {"--transfer_chunk_delay_ms=1500"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::mt19937 rng(std::random_device{}());
  nlohmann::json body = Completion(RandomPrompt(rng, 150), 200);
  body["stream"] = true;
  // The first event carries the first token: prefill is done and the move began.
  (*cluster)->PostStream("/v1/completions", body, [](const nlohmann::json&) { return false; });
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline && (*cluster)->Metric("mlaserve_requests_total", "outcome=\"abort\"") < 1) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ((*cluster)->Metric("mlaserve_requests_total", "outcome=\"abort\""), 1);
  EXPECT_EQ((*cluster)->Metric("mlaserve_sequences_moved_total", "reason=\"disaggregation\""), 1);
  EXPECT_LT((*cluster)->Metric("mlaserve_generation_tokens_total"), 10);
  EXPECT_EQ((*cluster)->Metric("mlaserve_num_requests_running"), 0);
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_blocks_used"), 0);
}

// 50 concurrent requests; one group is drained in the middle (by the admin
// RPC, or by SIGTERM to one of its workers): none is lost or altered.
void DrainUnderLoad(bool by_signal) {
  auto cluster = LocalCluster::Start(kTinyModelDir, 3, {"--max_num_seqs=16"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::mt19937 rng(std::random_device{}());
  struct Case {
    std::vector<int32_t> prompt;
    int max_tokens;
    GrpcOutput out;
  };
  std::vector<Case> cases(50);
  for (Case& c : cases) {
    c.prompt = RandomPrompt(rng, 1 + rng() % 100);
    c.max_tokens = 20 + rng() % 30;
  }
  std::vector<std::thread> threads;
  for (Case& c : cases) threads.emplace_back([&] { c.out = GenerateGrpc(**cluster, c.prompt, c.max_tokens); });
  absl::SleepFor(absl::Milliseconds(1500));
  if (by_signal) {
    ASSERT_TRUE((*cluster)->SignalWorker(0, SIGTERM));
  } else {
    grpc::ClientContext context;
    v1::DrainWorkerRequest request;
    request.set_worker_id(1);
    v1::DrainWorkerResponse response;
    grpc::Status drained = (*cluster)->AdminStub()->DrainWorker(&context, request, &response);
    ASSERT_TRUE(drained.ok()) << drained.error_message();
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(cases[i].out.status.ok()) << "request " << i << ": " << cases[i].out.status.error_message();
    EXPECT_EQ(cases[i].out.ids, SharedOracle().Greedy(cases[i].prompt, cases[i].max_tokens)) << "request " << i;
  }
  EXPECT_GT((*cluster)->Metric("mlaserve_sequences_moved_total", "reason=\"drain\""), 0);
  // The drained worker was let go and exited; the others serve on.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((*cluster)->NumWorkerProcesses() > 2 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ((*cluster)->NumWorkerProcesses(), 2);
  ExpectStillServing(**cluster, 2);
}

TEST(MigrationTest, DrainByAdminRpcUnderLoadLosesAndAltersNothing) { DrainUnderLoad(false); }
TEST(MigrationTest, DrainBySigtermUnderLoadLosesAndAltersNothing) { DrainUnderLoad(true); }

// The source of a transfer killed in its middle, over the gRPC pull or over a
// Gloo link (--kv_links=all).
class SourceKilledTest : public ::testing::TestWithParam<const char*> {};

TEST_P(SourceKilledTest, SourceKilledMidTransferFailsTheTransferCleanly) {
  // Each chunk the source sends (or its link's send) is preceded or followed
  // by a long pause: the kill lands while the transfer is open.
  auto cluster = LocalCluster::Start(kTinyModelDir, 2, {"--cache_affinity_slack=0", "--migration=always",
                                                        "--heartbeat_timeout_s=1", GetParam()},
                                     {"--transfer_chunk_delay_ms=3000"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::mt19937 rng(std::random_device{}());
  const std::vector<int32_t> prefix = RandomPrompt(rng, 200);
  ASSERT_TRUE(GenerateGrpc(**cluster, prefix, 1).status.ok());
  GrpcOutput busy_out;
  std::thread busy = BusyFirstGroup(**cluster, &busy_out, 2000);
  std::vector<int32_t> prompt = prefix;
  for (int32_t id : RandomPrompt(rng, 9)) prompt.push_back(id);
  GrpcOutput out;
  std::thread migrating([&] { out = GenerateGrpc(**cluster, prompt, 6); });
  absl::SleepFor(absl::Milliseconds(1000));
  // The first group is the first worker's.
  ASSERT_TRUE((*cluster)->SignalWorkerId(0, SIGKILL));
  migrating.join();
  busy.join();
  EXPECT_TRUE(busy_out.status.ok()) << busy_out.status.error_message();  // went on in the other group
  // The request recomputes what did not arrive, with the same output.
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.ids, SharedOracle().Greedy(prompt, 6));
  // The migration fails; so may the failover of the busy request, if it
  // tries the dead group's KV before the worker is declared dead.
  EXPECT_GE((*cluster)->Metric("mlaserve_kv_transfer_failures_total"), 1);
  EXPECT_GE((*cluster)->Metric("mlaserve_remote_prefix_tokens_total", "outcome=\"recomputed\""), 192);
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_blocks_used"), 0);
}

INSTANTIATE_TEST_SUITE_P(Paths, SourceKilledTest, ::testing::Values("--kv_links=gpus", "--kv_links=all"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param) == "--kv_links=all" ? "link" : "pull";
                         });

}  // namespace
}  // namespace mlaserve
