#include "tests/serving_client.h"

#include <algorithm>
#include <cmath>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "kernels/cpu/bf16_storage_ops.h"
#include "worker/model_runner.h"

namespace mlaserve {

Oracle::Oracle(KvCacheDtype kv_dtype)
    : ops_(TestDevice() == "cpu" ? NewCpuOps() : NewBf16StorageCpuOps()),
      model_(*Model::Load(kTinyModelDir, *ops_)),
      cache_(*KvCache::Create(*ops_, model_->config(), 64, 64, kv_dtype)) {}

std::vector<int32_t> Oracle::Greedy(const std::vector<int32_t>& prompt, int max_tokens) {
  return *ModelRunner(*model_, cache_).GenerateGreedy(prompt, max_tokens);
}

std::vector<std::vector<double>> Oracle::LogSoftmax(const std::vector<int32_t>& ids) {
  const std::vector<float> logits = *ModelRunner(*model_, cache_).Score(ids);
  const size_t vocab = model_->config().vocab_size;
  std::vector<std::vector<double>> rows;
  for (size_t begin = 0; begin < logits.size(); begin += vocab) {
    std::vector<double> row(logits.begin() + begin, logits.begin() + begin + vocab);
    const double max = *std::max_element(row.begin(), row.end());
    double sum = 0;
    for (double x : row) sum += std::exp(x - max);
    for (double& x : row) x -= max + std::log(sum);
    rows.push_back(std::move(row));
  }
  return rows;
}

double LogprobTolerance() { return TestDevice() == "cpu" ? kCpuLogprobTolerance : kBf16LogprobTolerance; }

bool GreedyMatchesOracle() { return TestDevice() == "cpu"; }

GrpcOutput GenerateGrpc(const LocalCluster& cluster, const std::vector<int32_t>& prompt, int max_tokens,
                        float temperature, std::optional<uint64_t> seed, int logprobs) {
  auto stub = cluster.GrpcStub();
  grpc::ClientContext context;
  v1::GenerateRequest request;
  request.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
  request.mutable_sampling()->set_max_tokens(max_tokens);
  request.mutable_sampling()->set_temperature(temperature);
  request.mutable_sampling()->set_ignore_eos(true);
  if (seed) request.mutable_sampling()->set_seed(*seed);
  if (logprobs >= 0) request.mutable_sampling()->set_logprobs(logprobs);
  auto reader = stub->Generate(&context, request);
  GrpcOutput out;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    out.ids.insert(out.ids.end(), response.token_ids().begin(), response.token_ids().end());
    out.text += response.text();
    out.logprobs.insert(out.logprobs.end(), response.logprobs().begin(), response.logprobs().end());
    if (!response.finish_reason().empty()) {
      out.finish_reason = response.finish_reason();
      out.usage = response.usage();
    }
  }
  out.status = reader->Finish();
  return out;
}

nlohmann::json Completion(const std::vector<int32_t>& prompt, int max_tokens) {
  return {{"model", "tiny-deepseek-v3"}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0},
          {"ignore_eos", true}};
}

std::vector<int32_t> RandomPrompt(std::mt19937& rng, int length) {
  std::vector<int32_t> ids(length);
  for (int32_t& id : ids) id = 4 + rng() % 1000;
  return ids;
}

std::vector<GrpcOutput> GenerateConcurrently(const LocalCluster& cluster, const std::vector<std::vector<int32_t>>& prompts,
                                             int max_tokens, const std::function<void()>& meanwhile) {
  std::vector<GrpcOutput> outputs(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] { outputs[i] = GenerateGrpc(cluster, prompts[i], max_tokens); });
  }
  if (meanwhile) meanwhile();
  for (std::thread& t : threads) t.join();
  return outputs;
}

void ExpectOraclesGreedy(Oracle& oracle, const std::vector<std::vector<int32_t>>& prompts,
                         const std::vector<GrpcOutput>& outputs, int max_tokens) {
  ASSERT_EQ(outputs.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(outputs[i].status.ok()) << "request " << i << ": " << outputs[i].status.error_message();
    EXPECT_EQ(outputs[i].ids, oracle.Greedy(prompts[i], max_tokens)) << "request " << i;
  }
}

std::vector<GrpcOutput> GenerateConcurrently(const LocalCluster& cluster, int count, int max_tokens,
                                             const std::function<void()>& meanwhile) {
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < count; ++i) prompts.push_back({5, 6, 7, 8 + i});
  return GenerateConcurrently(cluster, prompts, max_tokens, meanwhile);
}

void ExpectStillServing(const LocalCluster& cluster, int live_workers) {
  // A killed worker counts as live until its heartbeats are missed: on a fast
  // backend the requests before can finish first, so wait for that verdict.
  auto stub = cluster.GrpcStub();
  v1::HealthResponse health;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  do {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->Health(&context, v1::HealthRequest(), &health).ok());
    if (health.live_workers() == live_workers) break;
    absl::SleepFor(absl::Milliseconds(100));
  } while (absl::Now() < deadline);
  EXPECT_TRUE(health.serving());
  EXPECT_EQ(health.live_workers(), live_workers);
  for (int i = 0; i < 3; ++i) {
    GrpcOutput after = GenerateGrpc(cluster, {9, 10, static_cast<int32_t>(11 + i)}, 4);
    EXPECT_TRUE(after.status.ok()) << after.status.error_message();
  }
  EXPECT_EQ(cluster.Metric("mlaserve_kv_blocks_used"), 0);
}

}  // namespace mlaserve
