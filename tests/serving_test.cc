// The serving stack end to end: a real coordinator and workers on loopback,
// driven through HTTP and gRPC, checked against the fixture and against the
// in-process CPU engine (ModelRunner) as the oracle. The workers run on
// TestDevice(): the CPU for serving_test, the GPU for serving_gpu_test.
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/local_cluster.h"
#include "tests/serving_client.h"

namespace mlaserve {
namespace {

using json = nlohmann::json;
constexpr const char* kModel = kTinyModelDir;

#ifdef MLASERVE_TEST_DEVICE_DEFAULT
// serving_gpu_test's device unless MLASERVE_TEST_DEVICE says otherwise. Set
// here rather than by Bazel's env: the device machine runs the binary from a
// bundle, without Bazel.
[[maybe_unused]] const bool kDeviceDefaulted =
    setenv("MLASERVE_TEST_DEVICE", MLASERVE_TEST_DEVICE_DEFAULT, /*overwrite=*/0) == 0;
#endif

std::vector<int32_t> Ints(const json& j) { return j.get<std::vector<int32_t>>(); }

class ServingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::cerr << "serving tests: workers on " << TestDevice() << "\n";  // which binary's log this is
    auto cluster = LocalCluster::Start(kModel, 2, {"--max_batched_tokens=96"});
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
    oracle_ = new Oracle();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    delete oracle_;
  }
  static LocalCluster* cluster_;
  static Oracle* oracle_;
};
LocalCluster* ServingTest::cluster_ = nullptr;
Oracle* ServingTest::oracle_ = nullptr;

TEST_F(ServingTest, FixtureGreedyThroughHttpAndGrpc) {
  std::ifstream in(std::string(kModel) + "/reference.json");
  json reference = json::parse(in);
  for (const json& prompt : reference) {
    std::vector<int32_t> ids = Ints(prompt["ids"]);
    HttpResult http = cluster_->Post("/v1/completions", Completion(ids, 12).dump());
    ASSERT_EQ(http.status, 200) << http.body;
    EXPECT_EQ(http.json()["choices"][0]["text"], prompt["greedy_text"]);
    EXPECT_EQ(http.json()["usage"]["completion_tokens"], 12);
    GrpcOutput grpc = GenerateGrpc(*cluster_, ids, 12);
    ASSERT_TRUE(grpc.status.ok()) << grpc.status.error_message();
    EXPECT_EQ(grpc.ids, Ints(prompt["greedy"]));
    EXPECT_EQ(grpc.text, prompt["greedy_text"]);
    EXPECT_EQ(grpc.finish_reason, "length");
  }
}

TEST_F(ServingTest, ConcurrentRequestsReturnWhatTheyReturnAlone) {
  std::mt19937 rng(std::random_device{}());
  struct Case {
    std::vector<int32_t> prompt;
    int max_tokens;
    float temperature;
    uint64_t seed;
    GrpcOutput alone, together;
  };
  std::vector<Case> cases(32);
  for (size_t i = 0; i < cases.size(); ++i) {
    cases[i].prompt = RandomPrompt(rng, 1 + rng() % 150);
    cases[i].max_tokens = 1 + rng() % 16;
    cases[i].temperature = i % 2 == 0 ? 0.0f : 0.9f;  // half seeded sampling, half greedy
    cases[i].seed = rng();
  }
  for (Case& c : cases) c.alone = GenerateGrpc(*cluster_, c.prompt, c.max_tokens, c.temperature, c.seed);
  std::vector<std::thread> threads;
  for (Case& c : cases) {
    threads.emplace_back([&c] { c.together = GenerateGrpc(*cluster_, c.prompt, c.max_tokens, c.temperature, c.seed); });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(cases[i].together.status.ok()) << cases[i].together.status.error_message();
    EXPECT_EQ(cases[i].together.ids, cases[i].alone.ids) << "request " << i;
    EXPECT_EQ(static_cast<int>(cases[i].alone.ids.size()), cases[i].max_tokens);
    if (cases[i].temperature == 0 && GreedyMatchesOracle()) {
      EXPECT_EQ(cases[i].alone.ids, oracle_->Greedy(cases[i].prompt, cases[i].max_tokens)) << "request " << i;
    }
  }
}

TEST_F(ServingTest, SharedPrefixIsServedFromTheCacheWithTheSameOutput) {
  std::mt19937 rng(std::random_device{}());
  std::vector<int32_t> prefix = RandomPrompt(rng, 140);
  std::vector<int32_t> first = prefix, second = prefix;
  for (int32_t id : RandomPrompt(rng, 9)) first.push_back(id);
  for (int32_t id : RandomPrompt(rng, 13)) second.push_back(id);
  // `second` computed whole, then `first` and `second` again on its cached prefix.
  GrpcOutput uncached = GenerateGrpc(*cluster_, second, 8);
  ASSERT_TRUE(uncached.status.ok());
  EXPECT_EQ(uncached.usage.cached_prompt_tokens(), 0);
  HttpResult a = cluster_->Post("/v1/completions", Completion(first, 8).dump());
  ASSERT_EQ(a.status, 200) << a.body;
  EXPECT_EQ(a.json()["usage"]["prompt_tokens_details"]["cached_tokens"], 128);  // two full blocks of 64
  GrpcOutput b = GenerateGrpc(*cluster_, second, 8);
  ASSERT_TRUE(b.status.ok());
  EXPECT_EQ(b.usage.cached_prompt_tokens(), 128);
  EXPECT_EQ(b.ids, uncached.ids);
  if (GreedyMatchesOracle()) EXPECT_EQ(b.ids, oracle_->Greedy(second, 8));
  EXPECT_GE(cluster_->Metric("mlaserve_prefix_cache_hit_tokens_total"), 256);
}

TEST_F(ServingTest, StreamedDeltasConcatenateToTheWholeText) {
  std::mt19937 rng(std::random_device{}());
  std::vector<int32_t> prompt = RandomPrompt(rng, 20);
  json body = Completion(prompt, 24);
  HttpResult whole = cluster_->Post("/v1/completions", body.dump());
  ASSERT_EQ(whole.status, 200);
  body["stream"] = true;
  StreamResult stream = cluster_->PostStream("/v1/completions", body);
  EXPECT_EQ(stream.status, 200);
  EXPECT_TRUE(stream.done);
  std::string text;
  for (const json& event : stream.events) {
    if (event.contains("choices") && !event["choices"].empty()) text += event["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, whole.json()["choices"][0]["text"]);
  ASSERT_FALSE(stream.events.empty());
  EXPECT_EQ(stream.events.back()["choices"][0]["finish_reason"], "length");
}

TEST_F(ServingTest, BadInputsGetOpenAiErrorsAndTheServerKeepsServing) {
  struct Bad {
    std::string path, body;
    int status;
  };
  const std::vector<Bad> cases = {
      {"/v1/completions", "{not json", 400},
      {"/v1/completions", R"({"model": "tiny-deepseek-v3", "prompt": [1, 5000]})", 400},
      {"/v1/completions", R"({"model": "tiny-deepseek-v3", "prompt": "hi", "max_tokens": 5000})", 400},
      {"/v1/completions", R"({"model": "no-such-model", "prompt": "hi"})", 404},
      {"/v1/completions", R"({"model": "tiny-deepseek-v3", "prompt": "hi", "temperature": -1})", 400},
      {"/v1/completions", R"({"model": "tiny-deepseek-v3"})", 400},
      {"/v1/chat/completions", R"({"model": "tiny-deepseek-v3", "messages": "hello"})", 400},
  };
  for (const Bad& c : cases) {
    HttpResult r = cluster_->Post(c.path, c.body);
    EXPECT_EQ(r.status, c.status) << c.body << " -> " << r.body;
    json error = r.json();
    ASSERT_TRUE(error.is_object() && error.contains("error")) << r.body;
    EXPECT_TRUE(error["error"]["message"].is_string());
    EXPECT_TRUE(error["error"].contains("type") && error["error"].contains("param") && error["error"].contains("code"));
  }
  EXPECT_EQ(cluster_->Post("/v1/completions", Completion({5, 6, 7}, 2).dump()).status, 200);
}

TEST_F(ServingTest, ClosingTheStreamCancelsTheRequestAndFreesItsBlocks) {
  json body = Completion({10, 11, 12, 13}, 1500);
  body["stream"] = true;
  const double aborted_before = cluster_->Metric("mlaserve_requests_total", "outcome=\"abort\"");
  int events = 0;
  cluster_->PostStream("/v1/completions", body, [&](const json&) { return ++events < 3; });
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline &&
         cluster_->Metric("mlaserve_requests_total", "outcome=\"abort\"") < aborted_before + 1) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(cluster_->Metric("mlaserve_requests_total", "outcome=\"abort\""), aborted_before + 1);
  EXPECT_EQ(cluster_->Metric("mlaserve_kv_blocks_used"), 0);
  EXPECT_EQ(cluster_->Metric("mlaserve_num_requests_running"), 0);
}

// A pool far too small for the load: preemption and eviction happen, outputs stay exact.
TEST(SmallCacheServingTest, PreemptionAndEvictionKeepOutputsExact) {
  auto cluster = LocalCluster::Start(kModel, 1, {"--kv_blocks=8", "--block_size=16", "--max_batched_tokens=48"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  // /v1/models says what fits: --kv_blocks x --block_size.
  const json kv = (*cluster)->Get("/v1/models").json()["data"][0]["kv_cache"];
  EXPECT_EQ(kv["tokens"], 8 * 16) << kv;
  EXPECT_EQ(kv["groups"][0]["tokens_per_replica"], 8 * 16) << kv;
  Oracle oracle;
  std::mt19937 rng(std::random_device{}());
  std::vector<int32_t> shared = RandomPrompt(rng, 32);
  std::vector<std::vector<int32_t>> prompts(10);
  for (auto& p : prompts) {
    p = rng() % 2 ? shared : std::vector<int32_t>{};
    for (int32_t id : RandomPrompt(rng, 8 + rng() % 30)) p.push_back(id);
  }
  // Alone, each request fits the pool: no preemption, the reference run.
  std::vector<GrpcOutput> alone(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) alone[i] = GenerateGrpc(**cluster, prompts[i], 40);
  EXPECT_EQ((*cluster)->Metric("mlaserve_preemptions_total"), 0);
  const std::vector<GrpcOutput> outputs = GenerateConcurrently(**cluster, prompts, 40);
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(outputs[i].status.ok()) << outputs[i].status.error_message();
    ASSERT_TRUE(alone[i].status.ok()) << alone[i].status.error_message();
    EXPECT_EQ(outputs[i].ids, alone[i].ids) << "request " << i << ": preempted and recomputed vs alone";
    if (GreedyMatchesOracle()) EXPECT_EQ(outputs[i].ids, oracle.Greedy(prompts[i], 40)) << "request " << i;
  }
  EXPECT_GT((*cluster)->Metric("mlaserve_preemptions_total"), 0);
  EXPECT_EQ((*cluster)->Metric("mlaserve_kv_blocks_used"), 0);
}

// A dead worker fails its group; the group's requests go on in the other
// group from what their clients have seen, with the output an undisturbed run
// gives, and the cluster keeps serving.
TEST(WorkerFailureTest, DeadWorkersRequestsFinishInTheOtherGroupUnchanged) {
  auto cluster = LocalCluster::Start(kModel, 2, {"--heartbeat_timeout_s=1"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const std::vector<GrpcOutput> undisturbed = GenerateConcurrently(**cluster, 6, 1000);
  const std::vector<GrpcOutput> outputs = GenerateConcurrently(**cluster, 6, 1000, [&] {
    absl::SleepFor(absl::Milliseconds(500));
    EXPECT_TRUE((*cluster)->KillWorker(0));
  });
  for (size_t i = 0; i < outputs.size(); ++i) {
    ASSERT_TRUE(outputs[i].status.ok()) << "request " << i << ": " << outputs[i].status.error_message();
    EXPECT_EQ(outputs[i].ids.size(), 1000u);
    EXPECT_EQ(outputs[i].ids, undisturbed[i].ids) << "request " << i;
  }
  EXPECT_GT((*cluster)->Metric("mlaserve_sequences_moved_total", "reason=\"failover\""), 0);
  ExpectStillServing(**cluster, 1);
}

// Greedy completions with logprobs=5: each sampled token's logprob is the
// largest of its top_logprobs, and all are the log_softmax of the in-process
// model's logits (within LogprobTolerance(): bf16 on a GPU).
TEST_F(ServingTest, GreedyLogprobsAreTheOraclesLogSoftmax) {
  std::ifstream in(std::string(kModel) + "/reference.json");
  const json reference = json::parse(in);
  constexpr int kTokens = 8, kTop = 5;
  const double tolerance = LogprobTolerance();
  for (const json& prompt : reference) {
    const std::vector<int32_t> ids = Ints(prompt["ids"]);
    json body = Completion(ids, kTokens);
    body["logprobs"] = kTop;
    HttpResult http = cluster_->Post("/v1/completions", body.dump());
    ASSERT_EQ(http.status, 200) << http.body;
    const json logprobs = http.json()["choices"][0]["logprobs"];
    ASSERT_EQ(logprobs["token_logprobs"].size(), static_cast<size_t>(kTokens)) << logprobs;
    // Output token k is sampled from the logits at position ids.size() - 1 + k.
    const std::vector<int32_t> greedy = oracle_->Greedy(ids, kTokens);
    std::vector<int32_t> sequence = ids;
    sequence.insert(sequence.end(), greedy.begin(), greedy.end() - 1);
    const std::vector<std::vector<double>> rows = oracle_->LogSoftmax(sequence);
    for (int k = 0; k < kTokens; ++k) {
      SCOPED_TRACE(absl::StrCat("prompt of ", ids.size(), " tokens, output token ", k));
      const std::vector<double>& row = rows[ids.size() - 1 + k];
      std::vector<double> top = row;
      std::partial_sort(top.begin(), top.begin() + kTop, top.end(), [](double a, double b) { return a > b; });
      top.resize(kTop);
      const double token_logprob = logprobs["token_logprobs"][k];
      EXPECT_NEAR(token_logprob, row[greedy[k]], tolerance);
      const json& alternatives = logprobs["top_logprobs"][k];
      ASSERT_FALSE(alternatives.empty());
      EXPECT_LE(alternatives.size(), static_cast<size_t>(kTop));  // the greedy token is one of the top
      double max_alternative = alternatives.begin()->get<double>();
      for (const json& value : alternatives) {
        // Tokens whose texts coincide share an entry, so match values, not positions.
        const double x = value.get<double>();
        max_alternative = std::max(max_alternative, x);
        EXPECT_TRUE(std::any_of(top.begin(), top.end(), [&](double e) { return std::abs(x - e) <= tolerance; }))
            << x << " is not among the top " << kTop << " logprobs";
      }
      EXPECT_EQ(token_logprob, max_alternative);
      EXPECT_NEAR(token_logprob, top[0], tolerance);
    }
  }
}

}  // namespace
}  // namespace mlaserve
