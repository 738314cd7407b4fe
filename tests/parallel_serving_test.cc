// Sharded engine groups end to end on the CPU: tensor-parallel attention,
// expert parallelism and data-parallel attention replicas, each rank a worker
// process talking Gloo over loopback, must serve exactly what one worker
// serves; a killed rank fails its group's requests and no others.
#include <cmath>
#include <fstream>
#include <random>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/local_cluster.h"
#include "coordinator/serving/request.h"
#include "tests/serving_client.h"

namespace mlaserve {
namespace {

using json = nlohmann::json;

struct ClusterShape {
  const char* name;
  int workers;
  std::vector<std::string> flags;
  bool context_parallel = false;  // prompts of 40 tokens or more prefill split over the replicas
  // The group's KV blocks over all its replicas (the default pool of 256 a
  // rank; decode context parallelism deals a replica's over its head shards).
  int64_t kv_blocks = 0;
};

class ShardedServingTest : public ::testing::TestWithParam<ClusterShape> {
 protected:
  static Oracle& oracle() {
    static Oracle* oracle = new Oracle();
    return *oracle;
  }

  // The top logprobs the cluster reports for each output token are those of
  // one worker's logits, within float32 summation-order noise (1e-5 relative).
  static void ExpectOneWorkersLogprobs(const std::vector<int32_t>& prompt, const GrpcOutput& out) {
    ASSERT_EQ(out.logprobs.size(), out.ids.size());
    std::vector<int32_t> sequence = prompt;
    sequence.insert(sequence.end(), out.ids.begin(), out.ids.end() - 1);
    const std::vector<std::vector<double>> rows = oracle().LogSoftmax(sequence);
    for (size_t k = 0; k < out.ids.size(); ++k) {
      const std::vector<double>& row = rows[prompt.size() - 1 + k];
      const v1::TokenLogprobs& got = out.logprobs[k];
      ASSERT_EQ(got.top_token_ids_size(), kMaxLogprobs);
      double diff = 0, norm = 0;
      for (int i = 0; i < got.top_token_ids_size(); ++i) {
        const double want = row[got.top_token_ids(i)];
        diff += (got.top_logprobs(i) - want) * (got.top_logprobs(i) - want);
        norm += want * want;
      }
      EXPECT_LT(std::sqrt(diff / norm), 1e-5) << "output token " << k;
      EXPECT_EQ(got.token_id(), out.ids[k]);
      // Greedy: the sampled token is the most likely one.
      EXPECT_EQ(got.top_token_ids(0), out.ids[k]);
    }
  }
};

TEST_P(ShardedServingTest, ServesWhatOneWorkerServes) {
  const ClusterShape& shape = GetParam();
  std::vector<std::string> flags = shape.flags;
  flags.push_back("--max_batched_tokens=64");
  flags.push_back(shape.context_parallel ? "--context_parallel_min_tokens=40" : "--context_parallel_min_tokens=0");
  auto cluster = LocalCluster::Start(kTinyModelDir, shape.workers, flags);
  ASSERT_TRUE(cluster.ok()) << cluster.status();

  std::ifstream in(std::string(kTinyModelDir) + "/reference.json");
  for (const json& prompt : json::parse(in)) {
    const std::vector<int32_t> ids = prompt["ids"].get<std::vector<int32_t>>();
    HttpResult http = (*cluster)->Post("/v1/completions", Completion(ids, 12).dump());
    ASSERT_EQ(http.status, 200) << http.body;
    EXPECT_EQ(http.json()["choices"][0]["text"], prompt["greedy_text"]);
    GrpcOutput grpc = GenerateGrpc(**cluster, ids, 12, 0, std::nullopt, kMaxLogprobs);
    ASSERT_TRUE(grpc.status.ok()) << grpc.status.error_message();
    EXPECT_EQ(grpc.ids, prompt["greedy"].get<std::vector<int32_t>>());
    ExpectOneWorkersLogprobs(ids, grpc);
  }

  // Concurrent requests of mixed lengths: chunked prefills and decodes share
  // steps, and with several attention replicas every replica gets some.
  std::mt19937 rng(std::random_device{}());
  std::vector<std::vector<int32_t>> prompts(10);
  for (auto& p : prompts) p = RandomPrompt(rng, 1 + rng() % 120);
  ExpectOraclesGreedy(oracle(), prompts, GenerateConcurrently(**cluster, prompts, 10), 10);
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_blocks_used"), 0);
  if (shape.kv_blocks > 0) EXPECT_EQ((*cluster)->Metric("mlaserve_kv_blocks_free"), shape.kv_blocks);
  if (shape.context_parallel) {
    EXPECT_GT((*cluster)->Metric("mlaserve_context_parallel_chunks_total"), 0) << "no prompt was split";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ShardedServingTest,
    ::testing::Values(ClusterShape{"tp2", 2, {"--tp=2", "--ep=1"}, false, 256},
                      ClusterShape{"ep2_dp_attention", 2, {"--tp=1", "--dp_attention=2", "--ep=2"}},
                      ClusterShape{"ep4_dp_attention", 4, {"--tp=1", "--dp_attention=4", "--ep=4"}},
                      ClusterShape{"tp2_x_ep2", 4, {"--tp=2", "--dp_attention=2", "--ep=2"}},
                      ClusterShape{"two_groups_tp2_ep2", 4, {"--tp=2", "--ep=2"}},
                      ClusterShape{"context_parallel_dp2", 2, {"--tp=1", "--dp_attention=2", "--ep=2"}, true},
                      ClusterShape{"context_parallel_tp2_x_dp2", 4, {"--tp=2", "--dp_attention=2", "--ep=4"}, true},
                      ClusterShape{"decode_context_parallel_tp2", 2,
                                   {"--tp=2", "--ep=1", "--decode_context_parallel=on"}, false, 512},
                      // auto: 24 blocks of 64 a rank hold less than one 2,048-token context.
                      ClusterShape{"decode_context_parallel_auto", 2, {"--tp=2", "--ep=1", "--kv_blocks=24"}, false, 48},
                      ClusterShape{"decode_context_parallel_tp2_x_dp2", 4,
                                   {"--tp=2", "--dp_attention=2", "--ep=4", "--decode_context_parallel=on"}, false,
                                   1024}),
    [](const ::testing::TestParamInfo<ClusterShape>& info) { return info.param.name; });

// What decode context parallelism is for: with 16 blocks of 64 a rank, a
// request of 1,900 tokens fits no rank's pool and is refused without it; with
// it (auto: one 2,048-token context would not fit otherwise) the replica's two
// shards hold it between them and it is served as one worker serves it.
TEST(DecodeContextParallelTest, ServesAContextNoRankHoldsAlone) {
  std::mt19937 rng(std::random_device{}());
  const std::vector<int32_t> prompt = RandomPrompt(rng, 1860);
  {
    auto whole = LocalCluster::Start(kTinyModelDir, 2,
                                     {"--tp=2", "--ep=1", "--kv_blocks=16", "--decode_context_parallel=off"});
    ASSERT_TRUE(whole.ok()) << whole.status();
    const GrpcOutput refused = GenerateGrpc(**whole, prompt, 40);
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << refused.status.error_message();
  }
  auto cluster = LocalCluster::Start(kTinyModelDir, 2, {"--tp=2", "--ep=1", "--kv_blocks=16"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const GrpcOutput out = GenerateGrpc(**cluster, prompt, 40);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  Oracle oracle;
  EXPECT_EQ(out.ids, oracle.Greedy(prompt, 40));
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_blocks_free"), 32);
}

// Eight greedy requests of `tokens` on `cluster`, then the same eight again
// with rank 0 killed once each has about 100 tokens (a whole 64-token block
// of KV on the killed rank's peer): every request of the second run ends with
// the first run's output.
void ExpectAKilledRankChangesNoOutput(const LocalCluster& cluster, int tokens) {
  const std::vector<GrpcOutput> undisturbed = GenerateConcurrently(cluster, 8, tokens);
  const double generated_before = cluster.Metric("mlaserve_generation_tokens_total");
  const std::vector<GrpcOutput> outputs = GenerateConcurrently(cluster, 8, tokens, [&] {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (cluster.Metric("mlaserve_generation_tokens_total") - generated_before < 8 * 100 &&
           absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    EXPECT_TRUE(cluster.KillWorker(0));
  });
  for (size_t i = 0; i < outputs.size(); ++i) {
    ASSERT_TRUE(outputs[i].status.ok()) << "request " << i << ": " << outputs[i].status.error_message();
    EXPECT_EQ(outputs[i].ids, undisturbed[i].ids) << "request " << i;
  }
  EXPECT_GT(cluster.Metric("mlaserve_sequences_moved_total", "reason=\"failover\""), 0);
}

// Two groups of two ranks: killing one rank fails its group; the group's
// requests go on in the other group, their KV read from the surviving rank,
// with the output an undisturbed run gives, and new requests go to the
// surviving group. (The prompts share less than a block: the undisturbed run
// moves no KV.)
TEST(ShardedFailureTest, KilledRanksRequestsFinishInTheOtherGroupUnchanged) {
  auto cluster = LocalCluster::Start(kTinyModelDir, 4,
                                     {"--tp=2", "--ep=2", "--heartbeat_timeout_s=1", "--comm_timeout_s=5"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  ExpectAKilledRankChangesNoOutput(**cluster, 400);
  // The killed rank's peer held the same latent KV: it moved rather than
  // being recomputed.
  EXPECT_GT((*cluster)->Metric("mlaserve_remote_prefix_tokens_total", "outcome=\"migrated\""), 0);
  ExpectStillServing(**cluster, 3);
}

// The same with decode context parallelism: the killed rank's peer holds only
// its share of each sequence's KV, so the group's requests are recomputed in
// the other group, with the same output.
TEST(ShardedFailureTest, KilledRankOfASpreadReplicaHasItsRequestsRecomputedUnchanged) {
  auto cluster = LocalCluster::Start(kTinyModelDir, 4,
                                     {"--tp=2", "--ep=2", "--heartbeat_timeout_s=1", "--comm_timeout_s=5",
                                      "--decode_context_parallel=on"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  ExpectAKilledRankChangesNoOutput(**cluster, 300);
  EXPECT_EQ((*cluster)->Metric("mlaserve_remote_prefix_tokens_total", "outcome=\"migrated\""), 0);
  EXPECT_GT((*cluster)->Metric("mlaserve_remote_prefix_tokens_total", "outcome=\"recomputed\""), 0);
  ExpectStillServing(**cluster, 3);
}

// Two groups of two attention replicas splitting long prompts over both:
// killing a rank while prompts are being split fails its group (the copies
// in its replicas go with it); its requests finish in the other group with
// one worker's greedy tokens, and no block stays held.
TEST(ShardedFailureTest, ContextParallelPrefillsSurviveAKilledRank) {
  auto cluster = LocalCluster::Start(kTinyModelDir, 4,
                                     {"--tp=1", "--dp_attention=2", "--ep=2", "--heartbeat_timeout_s=1",
                                      "--comm_timeout_s=5", "--max_batched_tokens=16",
                                      "--context_parallel_min_tokens=32"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::mt19937 rng(std::random_device{}());
  std::vector<std::vector<int32_t>> prompts(6);
  for (auto& p : prompts) p = RandomPrompt(rng, 1000 + static_cast<int>(rng() % 500));
  const std::vector<GrpcOutput> outputs = GenerateConcurrently(**cluster, prompts, 8, [&] {
    // Once some prompts have had chunks split, with more to come.
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while ((*cluster)->Metric("mlaserve_context_parallel_chunks_total") < 10 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    EXPECT_TRUE((*cluster)->KillWorker(0));
  });
  Oracle oracle;
  ExpectOraclesGreedy(oracle, prompts, outputs, 8);
  EXPECT_GT((*cluster)->Metric("mlaserve_sequences_moved_total", "reason=\"failover\""), 0);
  ExpectStillServing(**cluster, 3);
}

}  // namespace
}  // namespace mlaserve
