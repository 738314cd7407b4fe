#include "simulator/cluster_simulator.h"

#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mlaserve::sim {
namespace {

// a + b per token of the step.
class LinearCost final : public StepCost {
 public:
  LinearCost(double a, double b) : a_(a), b_(b) {}
  double Seconds(const StepShape& s) const override { return a_ + b_ * static_cast<double>(s.tokens); }
  std::string ToString() const override { return "linear"; }

 private:
  const double a_, b_;
};

GroupSpec Group(std::shared_ptr<const StepCost> cost, GroupRole role = GroupRole::kMixed, int64_t blocks = 256) {
  return {.role = role,
          .num_blocks = blocks,
          .block_size = 16,
          .scheduler = {.max_num_seqs = 32, .max_batched_tokens = 256},
          .cost = std::move(cost)};
}

ClusterSpec Cluster(std::vector<GroupSpec> groups) {
  return {.groups = std::move(groups), .kv_bytes_per_s = 1e9, .kv_bytes_per_block = 1000};
}

std::vector<bench::Session> Workload(bench::WorkloadKind kind, int64_t requests, int64_t input, int64_t output) {
  return bench::GenerateWorkload({.kind = kind,
                                  .num_requests = requests,
                                  .input_len = input,
                                  .output_len = output,
                                  .prefix_len = 128,
                                  .num_prefixes = 2,
                                  .vocab_low = 10,
                                  .vocab_high = 5000,
                                  .seed = std::random_device{}()})
      .value();
}

TEST(ClusterSimulatorTest, OneRequestTakesAStepPerToken) {
  // Constant 10 ms steps: the prompt's step gives the first token, each
  // later step one more, and the overlapped loop launches them back to back.
  const ClusterSpec cluster = Cluster({Group(std::make_shared<LinearCost>(0.010, 0.0))});
  const LoadSpec load{.sessions = Workload(bench::WorkloadKind::kRandom, 1, 100, 12), .concurrency = 1};
  absl::StatusOr<SimulationResult> result = Simulate(cluster, load);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->requests.size(), 1u);
  const bench::RequestResult& r = result->requests[0];
  EXPECT_TRUE(r.success);
  EXPECT_EQ(r.completion_tokens, 12);
  EXPECT_NEAR(r.ttft_ms, 10, 1e-9);
  EXPECT_NEAR(r.e2e_ms, 120, 1e-9);
  ASSERT_EQ(r.itl_ms.size(), 11u);
  for (double gap : r.itl_ms) EXPECT_NEAR(gap, 10, 1e-9);
  EXPECT_EQ(result->steps, 12);  // the last sample is known to be the last: no step past it
  EXPECT_NEAR(result->duration_s, 0.120, 1e-12);
}

TEST(ClusterSimulatorTest, ReplicatedGroupsMultiplyThroughput) {
  auto cost = std::make_shared<LinearCost>(0.005, 20e-6);
  const auto sessions = Workload(bench::WorkloadKind::kRandom, 256, 64, 32);
  const LoadSpec one_load{.sessions = {sessions.begin(), sessions.begin() + 128}, .concurrency = 16};
  const LoadSpec two_load{.sessions = sessions, .concurrency = 32};
  absl::StatusOr<SimulationResult> one = Simulate(Cluster({Group(cost)}), one_load);
  absl::StatusOr<SimulationResult> two = Simulate(Cluster({Group(cost), Group(cost)}), two_load);
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(one->requests.size(), 128u);
  EXPECT_EQ(two->requests.size(), 256u);
  const double ratio = two->Summary().output_throughput / one->Summary().output_throughput;
  EXPECT_NEAR(ratio, 2.0, 0.1);
}

TEST(ClusterSimulatorTest, SharedPrefixesHitTheCache) {
  auto cost = std::make_shared<LinearCost>(0.005, 20e-6);
  const LoadSpec shared{.sessions = Workload(bench::WorkloadKind::kSharedPrefix, 64, 32, 8), .concurrency = 4};
  const LoadSpec random{.sessions = Workload(bench::WorkloadKind::kRandom, 64, 160, 8), .concurrency = 4};
  absl::StatusOr<SimulationResult> hit = Simulate(Cluster({Group(cost)}), shared);
  absl::StatusOr<SimulationResult> miss = Simulate(Cluster({Group(cost)}), random);
  ASSERT_TRUE(hit.ok()) << hit.status();
  ASSERT_TRUE(miss.ok()) << miss.status();
  // 128 of 160 prompt tokens are one of two prefixes: after the first request
  // of each, their whole blocks are cached.
  EXPECT_GT(hit->Summary().prefix_cache_hit_rate, 0.6);
  EXPECT_EQ(miss->Summary().prefix_cache_hit_rate, 0.0);
  EXPECT_LT(hit->Summary().ttft_ms.p50, miss->Summary().ttft_ms.p50);
}

TEST(ClusterSimulatorTest, DisaggregatedRequestsMoveTheirKvToADecodeGroup) {
  auto cost = std::make_shared<LinearCost>(0.002, 10e-6);
  ClusterSpec cluster = Cluster({Group(cost, GroupRole::kPrefill), Group(cost, GroupRole::kDecode),
                                 Group(cost, GroupRole::kDecode)});
  cluster.kv_latency_s = 0.5;  // a slow link shows in the gap after the first token
  const LoadSpec load{.sessions = Workload(bench::WorkloadKind::kRandom, 20, 100, 6), .concurrency = 8};
  absl::StatusOr<SimulationResult> result = Simulate(cluster, load);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->requests.size(), 20u);
  EXPECT_EQ(result->handoffs, 20);
  // 100 tokens: 6 whole 16-token blocks moved per request.
  EXPECT_EQ(result->moved_bytes, 20 * 6 * 1000);
  for (const bench::RequestResult& r : result->requests) {
    EXPECT_EQ(r.completion_tokens, 6);
    ASSERT_FALSE(r.itl_ms.empty());
    EXPECT_GE(r.itl_ms[0], 500);
  }
}

// a + b per token of the busiest replica.
class BusiestReplicaCost final : public StepCost {
 public:
  BusiestReplicaCost(double a, double b) : a_(a), b_(b) {}
  double Seconds(const StepShape& s) const override {
    return a_ + b_ * static_cast<double>(s.max_replica_tokens);
  }
  std::string ToString() const override { return "busiest replica"; }

 private:
  const double a_, b_;
};

TEST(ClusterSimulatorTest, ContextParallelismSharesALongPromptOverTheReplicas) {
  // Two replicas; a 2,048-token prompt: alone, its home replica computes 8
  // chunks of 256; split, chunks of 2 x 256 while 1,024 or more are left
  // (3), then 2 of 256: 5 steps of at most 256 tokens per replica.
  auto cost = std::make_shared<BusiestReplicaCost>(0.001, 1e-4);
  const LoadSpec load{.sessions = Workload(bench::WorkloadKind::kRandom, 1, 2048, 2), .concurrency = 1};
  double ttft[2];
  for (int split = 0; split < 2; ++split) {
    GroupSpec group = Group(cost, GroupRole::kMixed, 512);
    group.workers = group.dp_attention = 2;
    group.scheduler.context_parallel_min_tokens = split ? 1024 : 0;
    absl::StatusOr<SimulationResult> result = Simulate(Cluster({group}), load);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->requests.size(), 1u);
    EXPECT_EQ(result->requests[0].completion_tokens, 2);
    ttft[split] = result->requests[0].ttft_ms;
  }
  EXPECT_NEAR(ttft[0], 8 * (1 + 25.6), 1e-6);
  EXPECT_NEAR(ttft[1], 5 * (1 + 25.6), 1e-6);
}

TEST(ClusterSimulatorTest, RefusesWhatCannotRun) {
  auto cost = std::make_shared<LinearCost>(0.001, 0);
  const LoadSpec load{.sessions = Workload(bench::WorkloadKind::kRandom, 2, 500, 8), .concurrency = 1};
  // 16 blocks of 16 tokens cannot hold a 508-token request.
  EXPECT_EQ(Simulate(Cluster({Group(cost, GroupRole::kMixed, 16)}), load).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Simulate(Cluster({}), load).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Simulate(Cluster({Group(cost, GroupRole::kPrefill)}), load).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Simulate(Cluster({Group(nullptr)}), load).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mlaserve::sim
