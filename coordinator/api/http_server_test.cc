#include "coordinator/api/http_server.h"

#include <httplib.h>

#include <algorithm>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "coordinator/api/raw_http_client.h"
#include "nlohmann/json.hpp"

namespace mlaserve {
namespace {

using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

constexpr char kModelDir[] = "tests/testdata/tiny-deepseek-v3/";
constexpr char kModel[] = "tiny-deepseek-v3";
constexpr int64_t kContext = 4096;
constexpr int32_t kFirstOutputId = 100;  // ids from here on are lone bytes >= 0x80: U+FFFD alone

// Output token i has logprob -4 - i; the top-N are 'a', 'b', ... (ids 68...)
// with logprobs -0.25, -0.5, ...
TokenLogprobs FakeLogprobs(int32_t i, int32_t top_n) {
  TokenLogprobs logprobs{kFirstOutputId + i, -4.0f - static_cast<float>(i), {}, {}};
  for (int32_t j = 0; j < top_n; ++j) {
    logprobs.top_ids.push_back(68 + j);
    logprobs.top_logprobs.push_back(-0.25f * static_cast<float>(j + 1));
  }
  return logprobs;
}

// An engine that "generates" token kFirstOutputId + i with text "t<i> " for
// i in [0, max_tokens), one every `token_delay`, on a thread per request.
// Asked for logprobs, it gives FakeLogprobs.
class FakeEngine : public Engine {
 public:
  FakeEngine(std::unique_ptr<Tokenizer> tokenizer, ModelConfig config)
      : tokenizer_(std::move(tokenizer)), config_(std::move(config)) {}

  ~FakeEngine() override {
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&mu_);
      shutting_down_ = true;
      threads.swap(threads_);
    }
    for (std::thread& thread : threads) thread.join();
  }

  absl::StatusOr<int64_t> Submit(GenerateInput input, UpdateCallback on_update) override {
    absl::MutexLock lock(&mu_);
    if (!reject_with_.ok()) return reject_with_;
    if (static_cast<int64_t>(input.prompt_ids.size()) + input.sampling.max_tokens > kContext) {
      return absl::InvalidArgumentError("prompt plus max_tokens exceeds the context");
    }
    const int64_t id = ++submitted_;
    last_input_ = input;
    threads_.emplace_back(
        [this, id, input = std::move(input), on_update = std::move(on_update)] { Generate(id, input, on_update); });
    return id;
  }

  void Cancel(int64_t request_id) override {
    absl::MutexLock lock(&mu_);
    cancelled_.push_back(request_id);
  }

  const Tokenizer& tokenizer() const override { return *tokenizer_; }
  const ModelConfig& model_config() const override { return config_; }
  const std::string& model_name() const override { return name_; }
  int64_t max_context() const override { return kContext; }
  // One group of two attention replicas of 4096 tokens.
  std::vector<GroupKvCapacity> KvCapacity() const override { return {{0, 2, 4096}}; }
  EngineHealth Health() const override {
    absl::MutexLock lock(&mu_);
    return EngineHealth{serving_, serving_ ? 2 : 0, 2};
  }

  void set_token_delay(absl::Duration delay) {
    absl::MutexLock lock(&mu_);
    token_delay_ = delay;
  }
  void set_reject_with(absl::Status status) {
    absl::MutexLock lock(&mu_);
    reject_with_ = std::move(status);
  }
  // The request fails with `error` in place of its `index`th token.
  void set_fail_at(int32_t index, absl::Status error) {
    absl::MutexLock lock(&mu_);
    fail_at_ = index;
    fail_with_ = std::move(error);
  }
  // Every token's text is empty, as a random-weights model's often are.
  void set_empty_text() {
    absl::MutexLock lock(&mu_);
    empty_text_ = true;
  }
  void set_serving(bool serving) {
    absl::MutexLock lock(&mu_);
    serving_ = serving;
  }
  // Generation starts only once `n` requests have been submitted.
  void set_start_gate(int64_t n) {
    absl::MutexLock lock(&mu_);
    start_gate_ = n;
  }

  GenerateInput last_input() const {
    absl::MutexLock lock(&mu_);
    return last_input_;
  }
  std::vector<int64_t> cancelled() const {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }
  bool WaitForCancel(absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    auto any = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !cancelled_.empty(); };
    return mu_.AwaitWithTimeout(absl::Condition(&any), timeout);
  }

 private:
  void Generate(int64_t id, const GenerateInput& input, const UpdateCallback& on_update) {
    absl::Duration delay;
    int32_t fail_at;
    absl::Status fail_with;
    bool empty_text;
    {
      absl::MutexLock lock(&mu_);
      auto open = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return submitted_ >= start_gate_ || shutting_down_; };
      mu_.AwaitWithTimeout(absl::Condition(&open), absl::Seconds(30));
      delay = token_delay_;
      fail_at = fail_at_;
      fail_with = fail_with_;
      empty_text = empty_text_;
    }
    GenerateUpdate update;
    update.prompt_tokens = static_cast<int32_t>(input.prompt_ids.size());
    update.cached_prompt_tokens = update.prompt_tokens / 2;
    for (int32_t i = 0; i < input.sampling.max_tokens; ++i) {
      if (Stopped(id, delay)) {
        update.token_ids.clear();
        update.text.clear();
        update.finish_reason = FinishReason::kAbort;
        return on_update(update);
      }
      const int32_t token = kFirstOutputId + i;
      update.token_ids = {token};
      if (input.sampling.logprobs >= 0) update.logprobs = {FakeLogprobs(i, input.sampling.logprobs)};
      update.text = empty_text ? "" : absl::StrCat("t", i, " ");
      update.completion_tokens = i + 1;
      if (i == fail_at) {
        update.text.clear();
        update.finish_reason = FinishReason::kError;
        update.error = fail_with;
        return on_update(update);
      }
      const std::vector<int32_t>& stops = input.sampling.stop_token_ids;
      if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
        update.text.clear();  // stop tokens are not part of the text
        update.finish_reason = FinishReason::kStop;
        return on_update(update);
      }
      if (i + 1 == input.sampling.max_tokens) update.finish_reason = FinishReason::kLength;
      on_update(update);
    }
  }

  // Waits `delay`; true when the request was cancelled meanwhile.
  bool Stopped(int64_t id, absl::Duration delay) {
    absl::MutexLock lock(&mu_);
    auto stopped = [this, id]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return shutting_down_ || std::find(cancelled_.begin(), cancelled_.end(), id) != cancelled_.end();
    };
    mu_.AwaitWithTimeout(absl::Condition(&stopped), delay);
    return stopped();
  }

  const std::unique_ptr<Tokenizer> tokenizer_;
  const ModelConfig config_;
  const std::string name_ = kModel;
  mutable absl::Mutex mu_;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  absl::Duration token_delay_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  absl::Status reject_with_ ABSL_GUARDED_BY(mu_);
  int32_t fail_at_ ABSL_GUARDED_BY(mu_) = -1;
  absl::Status fail_with_ ABSL_GUARDED_BY(mu_);
  bool serving_ ABSL_GUARDED_BY(mu_) = true;
  bool empty_text_ ABSL_GUARDED_BY(mu_) = false;
  int64_t start_gate_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t submitted_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  GenerateInput last_input_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> cancelled_ ABSL_GUARDED_BY(mu_);
};

// The `data:` payloads of a server-sent event stream.
std::vector<std::string> Events(const std::string& body) {
  std::vector<std::string> events;
  for (absl::string_view event : absl::StrSplit(body, "\n\n", absl::SkipEmpty())) {
    EXPECT_TRUE(absl::StartsWith(event, "data: ")) << event;
    events.emplace_back(event.substr(6));
  }
  return events;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
        Tokenizer::FromFile(std::string(kModelDir) + "tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    absl::StatusOr<ModelConfig> config = LoadModelConfig(std::string(kModelDir) + "config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    engine_ = std::make_unique<FakeEngine>(*std::move(tokenizer), *config);
    StartServer(HttpOptions{});
  }

  void TearDown() override {
    server_.reset();
    engine_.reset();
  }

  void StartServer(HttpOptions options) {
    server_ = std::make_unique<HttpServer>(*engine_, metrics_, options);
    const absl::Status started = server_->Start("127.0.0.1", 0);
    ASSERT_TRUE(started.ok()) << started;
    ASSERT_GT(server_->port(), 0);
  }

  httplib::Client Client() const {
    httplib::Client client("127.0.0.1", server_->port());
    client.set_read_timeout(10, 0);
    return client;
  }

  // POSTs `body`; returns the status and the parsed reply.
  std::pair<int, json> Post(const std::string& path, const std::string& body) const {
    httplib::Result result = Client().Post(path.c_str(), body, "application/json");
    if (!result) {
      ADD_FAILURE() << "no response from " << path << ": " << httplib::to_string(result.error());
      return {0, json()};
    }
    return {result->status, json::parse(result->body, nullptr, /*allow_exceptions=*/false)};
  }

  // A streamed request's events, [DONE] included.
  std::vector<std::string> PostStream(const std::string& path, const std::string& body) const {
    httplib::Result result = Client().Post(path.c_str(), body, "application/json");
    if (!result) {
      ADD_FAILURE() << "no response from " << path;
      return {};
    }
    EXPECT_EQ(result->status, 200) << result->body;
    EXPECT_THAT(result->get_header_value("Content-Type"), StartsWith("text/event-stream"));
    return Events(result->body);
  }

  std::vector<int32_t> WithBos(const std::string& text) const {
    std::vector<int32_t> ids = engine_->tokenizer().Encode(text);
    ids.insert(ids.begin(), 0);
    return ids;
  }

  ServingMetrics metrics_;
  std::unique_ptr<FakeEngine> engine_;
  std::unique_ptr<HttpServer> server_;
};

void ExpectError(const std::pair<int, json>& reply, int http_status, const std::string& type,
                 const json& param = nullptr) {
  EXPECT_EQ(reply.first, http_status) << reply.second;
  const json& error = reply.second["error"];
  ASSERT_TRUE(error.is_object()) << reply.second;
  EXPECT_EQ(error["type"], type);
  EXPECT_EQ(error["param"], param);
  EXPECT_TRUE(error["message"].is_string());
  EXPECT_TRUE(error.contains("code"));
}

TEST_F(HttpServerTest, CompletionResponse) {
  const auto [status, reply] =
      Post("/v1/completions", R"({"model": "tiny-deepseek-v3", "prompt": "Hello", "max_tokens": 3})");
  ASSERT_EQ(status, 200) << reply;
  EXPECT_THAT(reply["id"].get<std::string>(), StartsWith("cmpl-"));
  EXPECT_EQ(reply["object"], "text_completion");
  EXPECT_EQ(reply["model"], kModel);
  EXPECT_TRUE(reply["created"].is_number_integer());
  EXPECT_EQ(reply["choices"],
            json::parse(R"([{"index": 0, "text": "t0 t1 t2 ", "finish_reason": "length", "logprobs": null}])"));
  const std::vector<int32_t> prompt = WithBos("Hello");
  EXPECT_EQ(engine_->last_input().prompt_ids, prompt);
  const int n = static_cast<int>(prompt.size());
  EXPECT_EQ(reply["usage"], json({{"prompt_tokens", n},
                                  {"completion_tokens", 3},
                                  {"total_tokens", n + 3},
                                  {"prompt_tokens_details", {{"cached_tokens", n / 2}}}}));
}

TEST_F(HttpServerTest, CompletionDefaultsToSixteenTokens) {
  const auto [status, reply] = Post("/v1/completions", R"({"prompt": [5, 6]})");
  ASSERT_EQ(status, 200) << reply;
  EXPECT_EQ(reply["usage"]["completion_tokens"], 16);
  EXPECT_THAT(engine_->last_input().prompt_ids, ElementsAre(5, 6));
}

TEST_F(HttpServerTest, StopTokenEndsWithStop) {
  const auto [status, reply] = Post("/v1/completions", R"({"prompt": "a", "stop_token_ids": [102]})");
  ASSERT_EQ(status, 200) << reply;
  EXPECT_EQ(reply["choices"][0]["text"], "t0 t1 ");
  EXPECT_EQ(reply["choices"][0]["finish_reason"], "stop");
}

TEST_F(HttpServerTest, ChatResponse) {
  const auto [status, reply] = Post("/v1/chat/completions", R"({"model": "tiny-deepseek-v3", "max_tokens": 2,
      "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is MLA?"}]})");
  ASSERT_EQ(status, 200) << reply;
  EXPECT_THAT(reply["id"].get<std::string>(), StartsWith("chatcmpl-"));
  EXPECT_EQ(reply["object"], "chat.completion");
  EXPECT_EQ(reply["choices"], json::parse(R"([{"index": 0, "message": {"role": "assistant", "content": "t0 t1 "},
                                               "finish_reason": "length", "logprobs": null}])"));
  const std::vector<int32_t> prompt =
      engine_->tokenizer().Encode("<｜begin▁of▁sentence｜>Be terse.<｜User｜>What is MLA?<｜Assistant｜>");
  EXPECT_EQ(engine_->last_input().prompt_ids, prompt);
  EXPECT_EQ(reply["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(reply["usage"]["total_tokens"], prompt.size() + 2);
}

TEST_F(HttpServerTest, ChatDefaultsToTheRestOfTheContext) {
  const auto [status, reply] = Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}]})");
  ASSERT_EQ(status, 200) << reply;
  const GenerateInput input = engine_->last_input();
  EXPECT_EQ(input.sampling.max_tokens, kContext - static_cast<int64_t>(input.prompt_ids.size()));
}

TEST_F(HttpServerTest, StreamedCompletionConcatenatesToTheWholeText) {
  const std::string request = R"({"prompt": "Hello", "max_tokens": 5)";
  const auto [status, whole] = Post("/v1/completions", request + "}");
  ASSERT_EQ(status, 200) << whole;
  const std::vector<std::string> events = PostStream("/v1/completions", request + R"(, "stream": true})");
  ASSERT_EQ(events.size(), 6u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string id;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "text_completion");
    EXPECT_EQ(chunk["model"], kModel);
    if (id.empty()) id = chunk["id"];
    EXPECT_EQ(chunk["id"], id) << "one id per stream";
    EXPECT_FALSE(chunk.contains("usage"));
    ASSERT_EQ(chunk["choices"].size(), 1u);
    text += chunk["choices"][0]["text"].get<std::string>();
    EXPECT_EQ(chunk["choices"][0]["finish_reason"], i + 2 == events.size() ? json("length") : json(nullptr));
  }
  EXPECT_EQ(text, whole["choices"][0]["text"]);
}

// A client times every token, so a token without text still gets its chunk.
TEST_F(HttpServerTest, EveryTokenIsStreamedEvenWithoutText) {
  engine_->set_empty_text();
  const std::vector<std::string> events =
      PostStream("/v1/completions", R"({"prompt": "Hello", "max_tokens": 7, "stream": true})");
  ASSERT_EQ(events.size(), 8u);
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["choices"][0]["text"], "") << "chunk " << i;
  }
  const std::vector<std::string> chat = PostStream(
      "/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "stream": true})");
  EXPECT_EQ(chat.size(), 6u) << "the role chunk, one per token and [DONE]";
}

TEST_F(HttpServerTest, StreamedChatOpensWithTheRoleAndEndsWithUsage) {
  const std::string request = R"({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4)";
  const auto [status, whole] = Post("/v1/chat/completions", request + "}");
  ASSERT_EQ(status, 200) << whole;
  const std::vector<std::string> events =
      PostStream("/v1/chat/completions", request + R"(, "stream": true, "stream_options": {"include_usage": true}})");
  // Role, four tokens, usage, [DONE].
  ASSERT_EQ(events.size(), 7u);
  EXPECT_EQ(events.back(), "[DONE]");
  const json first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"], json::parse(R"({"role": "assistant", "content": ""})"));
  std::string content;
  for (size_t i = 1; i <= 4; ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_TRUE(chunk.contains("usage") && chunk["usage"].is_null()) << chunk;
    content += chunk["choices"][0]["delta"].value("content", "");
    EXPECT_EQ(chunk["choices"][0]["finish_reason"], i == 4 ? json("length") : json(nullptr));
  }
  EXPECT_EQ(content, whole["choices"][0]["message"]["content"]);
  const json usage = json::parse(events[5]);
  EXPECT_THAT(usage["choices"], IsEmpty());
  EXPECT_EQ(usage["usage"], whole["usage"]);
}

TEST_F(HttpServerTest, ErrorMidStreamIsAnErrorEvent) {
  engine_->set_fail_at(2, absl::InternalError("worker lost"));
  const std::vector<std::string> events = PostStream("/v1/completions", R"({"prompt": "a", "stream": true})");
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(json::parse(events[1])["choices"][0]["text"], "t1 ");
  const json error = json::parse(events[2]);
  EXPECT_EQ(error["error"]["message"], "worker lost");
  EXPECT_EQ(error["error"]["type"], "server_error");
  EXPECT_EQ(events[3], "[DONE]");

  ExpectError(Post("/v1/completions", R"({"prompt": "a"})"), 500, "server_error");
}

TEST_F(HttpServerTest, CompletionLogprobsWholeAndStreamed) {
  const std::string request = R"({"prompt": "Hello", "max_tokens": 3, "logprobs": 2)";
  const auto [status, whole] = Post("/v1/completions", request + "}");
  ASSERT_EQ(status, 200) << whole;
  EXPECT_EQ(engine_->last_input().sampling.logprobs, 2);
  EXPECT_EQ(whole["choices"][0]["logprobs"], json::parse(R"({
      "tokens": ["\ufffd", "\ufffd", "\ufffd"],
      "token_logprobs": [-4.0, -5.0, -6.0],
      "top_logprobs": [{"\ufffd": -4.0, "a": -0.25, "b": -0.5}, {"\ufffd": -5.0, "a": -0.25, "b": -0.5},
                       {"\ufffd": -6.0, "a": -0.25, "b": -0.5}],
      "text_offset": [0, 1, 2]})"));
  const std::vector<std::string> events = PostStream("/v1/completions", request + R"(, "stream": true})");
  ASSERT_EQ(events.size(), 4u);
  json streamed = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
                   {"text_offset", json::array()}};
  for (size_t i = 0; i < 3; ++i) {
    const json logprobs = json::parse(events[i])["choices"][0]["logprobs"];
    ASSERT_EQ(logprobs["tokens"].size(), 1u) << logprobs;
    for (auto& [key, values] : streamed.items()) values.push_back(logprobs[key][0]);
  }
  EXPECT_EQ(streamed, whole["choices"][0]["logprobs"]);
}

TEST_F(HttpServerTest, ChatLogprobsWholeAndStreamed) {
  const std::string request =
      R"({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "logprobs": true, "top_logprobs": 1)";
  const auto [status, whole] = Post("/v1/chat/completions", request + "}");
  ASSERT_EQ(status, 200) << whole;
  EXPECT_EQ(whole["choices"][0]["logprobs"], json::parse(R"({"content": [
      {"token": "\ufffd", "logprob": -4.0, "bytes": [163],
       "top_logprobs": [{"token": "a", "logprob": -0.25, "bytes": [97]}]},
      {"token": "\ufffd", "logprob": -5.0, "bytes": [164],
       "top_logprobs": [{"token": "a", "logprob": -0.25, "bytes": [97]}]}]})"));
  const std::vector<std::string> events = PostStream("/v1/chat/completions", request + R"(, "stream": true})");
  // Role, two tokens, [DONE].
  ASSERT_EQ(events.size(), 4u);
  EXPECT_TRUE(json::parse(events[0])["choices"][0]["logprobs"].is_null());
  json content = json::array();
  for (size_t i = 1; i <= 2; ++i) {
    const json logprobs = json::parse(events[i])["choices"][0]["logprobs"];
    ASSERT_EQ(logprobs["content"].size(), 1u) << logprobs;
    content.push_back(logprobs["content"][0]);
  }
  EXPECT_EQ(content, whole["choices"][0]["logprobs"]["content"]);

  // logprobs without top_logprobs: each token's own, no alternatives.
  const auto [plain_status, plain] = Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}],
                                                                       "max_tokens": 1, "logprobs": true})");
  ASSERT_EQ(plain_status, 200) << plain;
  EXPECT_EQ(plain["choices"][0]["logprobs"]["content"][0]["top_logprobs"], json::array());
}

struct BadInput {
  std::string path;
  std::string body;
  int http_status;
  std::string type;
  json param;
};

TEST_F(HttpServerTest, BadInputsGetOpenAiErrorsAndTheServerCarriesOn) {
  const std::vector<BadInput> cases = {
      {"/v1/completions", "", 400, "invalid_request_error", nullptr},
      {"/v1/completions", "{\"prompt\": ", 400, "invalid_request_error", nullptr},
      {"/v1/completions", "\"text\"", 400, "invalid_request_error", nullptr},
      {"/v1/completions", "\xff\xfe", 400, "invalid_request_error", nullptr},
      {"/v1/completions", std::string(50000, '[') + std::string(50000, ']'), 400, "invalid_request_error", nullptr},
      {"/v1/completions", R"({"prompt": "a\u0000b", "max_tokens": -1})", 400, "invalid_request_error", "max_tokens"},
      {"/v1/completions", R"({})", 400, "invalid_request_error", "prompt"},
      {"/v1/completions", R"({"prompt": ""})", 400, "invalid_request_error", "prompt"},
      {"/v1/completions", R"({"prompt": {"text": "a"}})", 400, "invalid_request_error", "prompt"},
      {"/v1/completions", R"({"prompt": ["a", "b"]})", 400, "invalid_request_error", "prompt"},
      {"/v1/completions", R"({"prompt": "a", "n": 2})", 400, "invalid_request_error", "n"},
      {"/v1/completions", R"({"prompt": "a", "echo": true})", 400, "invalid_request_error", "echo"},
      {"/v1/completions", R"({"prompt": "a", "best_of": 3})", 400, "invalid_request_error", "best_of"},
      {"/v1/completions", R"({"prompt": "a", "logprobs": 21})", 400, "invalid_request_error", "logprobs"},
      {"/v1/completions", R"({"prompt": "a", "logprobs": true})", 400, "invalid_request_error", "logprobs"},
      {"/v1/completions", R"({"prompt": "a", "temperature": 3})", 400, "invalid_request_error", "temperature"},
      {"/v1/completions", R"({"prompt": "a", "top_p": 0})", 400, "invalid_request_error", "top_p"},
      {"/v1/completions", R"({"prompt": "a", "top_k": -5})", 400, "invalid_request_error", "top_k"},
      {"/v1/completions", R"({"prompt": "a", "seed": "x"})", 400, "invalid_request_error", "seed"},
      {"/v1/completions", R"({"prompt": "a", "stop": {}})", 400, "invalid_request_error", "stop"},
      {"/v1/completions", R"({"prompt": "a", "frequency_penalty": 1})", 400, "invalid_request_error",
       "frequency_penalty"},
      {"/v1/completions", R"({"prompt": "a", "stream": 1})", 400, "invalid_request_error", "stream"},
      // The engine's own validation: prompt plus max_tokens beyond the context.
      {"/v1/completions", R"({"prompt": "a", "max_tokens": 4096})", 400, "invalid_request_error", nullptr},
      {"/v1/completions", R"({"model": "gpt-4", "prompt": "a"})", 404, "not_found_error", "model"},
      {"/v1/chat/completions", R"({"messages": []})", 400, "invalid_request_error", "messages"},
      {"/v1/chat/completions", R"({"messages": [{"role": "tool", "content": "x"}]})", 400, "invalid_request_error",
       "messages[0].role"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": null}]})", 400, "invalid_request_error",
       "messages[0].content"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 1.5})", 400,
       "invalid_request_error", "max_completion_tokens"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", 400,
       "invalid_request_error", "top_logprobs"},
      {"/tokenize", R"({"prompt": 5})", 400, "invalid_request_error", "prompt"},
      {"/tokenize", "nope", 400, "invalid_request_error", nullptr},
  };
  for (const BadInput& bad : cases) {
    SCOPED_TRACE(bad.path + " " + bad.body.substr(0, 100));
    ExpectError(Post(bad.path, bad.body), bad.http_status, bad.type, bad.param);
  }
  const auto [status, reply] = Post("/v1/completions", R"({"prompt": "still serving", "max_tokens": 1})");
  EXPECT_EQ(status, 200) << reply;
}

TEST_F(HttpServerTest, UnknownModelIsNotFound) {
  const std::pair<int, json> reply =
      Post("/v1/chat/completions", R"({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})");
  ExpectError(reply, 404, "not_found_error", "model");
  EXPECT_EQ(reply.second["error"]["code"], "model_not_found");
}

TEST_F(HttpServerTest, UnknownRoutesAreNotFound) {
  ExpectError(Post("/v1/embeddings", "{}"), 404, "not_found_error");
  httplib::Result result = Client().Get("/v1/completions");
  ASSERT_TRUE(result);
  ExpectError({result->status, json::parse(result->body, nullptr, false)}, 404, "not_found_error");
}

TEST_F(HttpServerTest, BodiesOverTheLimitAre413) {
  HttpOptions options;
  options.connections.max_body_bytes = 1024;
  StartServer(options);
  const std::string big = absl::StrCat(R"({"prompt": ")", std::string(4096, 'x'), R"("})");
  ExpectError(Post("/v1/completions", big), 413, "invalid_request_error");
  // Chunked uploads carry no length up front.
  httplib::Result result = Client().Post(
      "/v1/completions",
      [&big](size_t offset, httplib::DataSink& sink) {
        if (offset < big.size()) {
          sink.write(big.data() + offset, std::min<size_t>(512, big.size() - offset));
        } else {
          sink.done();
        }
        return true;
      },
      "application/json");
  ASSERT_TRUE(result);
  ExpectError({result->status, json::parse(result->body, nullptr, false)}, 413, "invalid_request_error");
  const auto [status, reply] = Post("/v1/completions", R"({"prompt": "small", "max_tokens": 1})");
  EXPECT_EQ(status, 200) << reply;
}

TEST_F(HttpServerTest, ApiKeysGuardEveryRouteButHealthAndMetrics) {
  HttpOptions options;
  options.api_keys = KeySet({"sk-one", "sk-two"});
  StartServer(options);
  const std::string body = R"({"prompt": "hello", "max_tokens": 2})";
  auto post = [&](const std::string& path, const std::string& authorization) {
    httplib::Headers headers;
    if (!authorization.empty()) headers.emplace("Authorization", authorization);
    httplib::Result result = Client().Post(path.c_str(), headers, body, "application/json");
    EXPECT_TRUE(result) << path;
    return result ? std::pair<int, json>{result->status, json::parse(result->body, nullptr, false)}
                  : std::pair<int, json>{0, json()};
  };
  for (const std::string& path : {"/v1/completions", "/v1/chat/completions", "/tokenize"}) {
    for (const std::string& authorization : {"", "Bearer sk-three", "Bearer sk-on", "sk-one", "Basic sk-one"}) {
      ExpectError(post(path, authorization), 401, "invalid_request_error");
    }
  }
  EXPECT_EQ(post("/v1/completions", "Bearer sk-one").first, 200);
  EXPECT_EQ(post("/v1/completions", "bearer sk-two").first, 200);
  httplib::Result models = Client().Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 401);
  EXPECT_EQ(models->get_header_value("WWW-Authenticate"), "Bearer");
  models = Client().Get("/v1/models", httplib::Headers{{"Authorization", "Bearer sk-two"}});
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  for (const char* open : {"/health", "/metrics"}) {
    httplib::Result result = Client().Get(open);
    ASSERT_TRUE(result) << open;
    EXPECT_EQ(result->status, 200) << open;
  }
  EXPECT_EQ(Client().Get("/no/such/route")->status, 401) << "unknown routes reveal nothing without a key";
}

TEST_F(HttpServerTest, EngineRejectionsMapToStatusesAndCount) {
  engine_->set_reject_with(absl::ResourceExhaustedError("queue full"));
  const std::pair<int, json> reply = Post("/v1/completions", R"({"prompt": "a"})");
  ExpectError(reply, 429, "rate_limit_exceeded");
  EXPECT_EQ(reply.second["error"]["message"], "queue full");
  httplib::Result full = Client().Post("/v1/completions", R"({"prompt": "a"})", "application/json");
  ASSERT_TRUE(full);
  EXPECT_EQ(full->get_header_value("Retry-After"), "1");
  ExpectError(Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "stream": true})"), 429,
              "rate_limit_exceeded");
  engine_->set_reject_with(absl::UnavailableError("no workers"));
  ExpectError(Post("/v1/completions", R"({"prompt": "a"})"), 503, "service_unavailable_error");
  engine_->set_reject_with(absl::InternalError("bug"));
  ExpectError(Post("/v1/completions", R"({"prompt": "a"})"), 500, "server_error");
  EXPECT_THAT(metrics_.Serialize(), HasSubstr("mlaserve_requests_rejected_total 5"));
}

TEST_F(HttpServerTest, ClientLeavingMidStreamCancels) {
  engine_->set_token_delay(absl::Milliseconds(20));
  RawHttpClient client(server_->port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.Post("/v1/completions", R"({"prompt": "a", "max_tokens": 1000, "stream": true})"));
  ASSERT_TRUE(client.ReadUntil("t1 ", absl::Seconds(10)));
  EXPECT_THAT(engine_->cancelled(), IsEmpty());
  client.Close();
  EXPECT_TRUE(engine_->WaitForCancel(absl::Seconds(5)));
  EXPECT_THAT(engine_->cancelled(), ElementsAre(1));
}

TEST_F(HttpServerTest, ClientLeavingBeforeTheWholeResponseCancels) {
  engine_->set_token_delay(absl::Milliseconds(20));
  RawHttpClient client(server_->port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000})"));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_THAT(engine_->cancelled(), IsEmpty());
  client.Close();
  EXPECT_TRUE(engine_->WaitForCancel(absl::Seconds(5)));
  EXPECT_THAT(engine_->cancelled(), ElementsAre(1));
}

TEST_F(HttpServerTest, StopCancelsRequestsInFlight) {
  engine_->set_token_delay(absl::Milliseconds(20));
  RawHttpClient streaming(server_->port());
  RawHttpClient waiting(server_->port());
  ASSERT_TRUE(streaming.Post("/v1/completions", R"({"prompt": "a", "max_tokens": 1000, "stream": true})"));
  ASSERT_TRUE(streaming.ReadUntil("t0 ", absl::Seconds(10)));
  ASSERT_TRUE(waiting.Post("/v1/completions", R"({"prompt": "a", "max_tokens": 1000})"));
  absl::SleepFor(absl::Milliseconds(100));
  const absl::Time start = absl::Now();
  server_->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  std::vector<int64_t> cancelled = engine_->cancelled();
  std::sort(cancelled.begin(), cancelled.end());
  EXPECT_THAT(cancelled, ElementsAre(1, 2));
}

TEST_F(HttpServerTest, ServesManyStreamsAtOnce) {
  // No request generates until all are in: every stream must hold its
  // connection thread at the same time.
  constexpr int kStreams = 100;
  engine_->set_start_gate(kStreams);
  std::vector<std::string> texts(kStreams);
  std::vector<std::thread> clients;
  for (int i = 0; i < kStreams; ++i) {
    clients.emplace_back([this, i, &texts] {
      httplib::Client client = Client();
      client.set_read_timeout(30, 0);
      httplib::Result result =
          client.Post("/v1/completions", R"({"prompt": "a", "max_tokens": 3, "stream": true})", "application/json");
      if (!result || result->status != 200) return;
      for (const std::string& event : Events(result->body)) {
        if (event != "[DONE]") texts[i] += json::parse(event)["choices"][0]["text"].get<std::string>();
      }
    });
  }
  for (std::thread& client : clients) client.join();
  for (int i = 0; i < kStreams; ++i) EXPECT_EQ(texts[i], "t0 t1 t2 ") << "stream " << i;
}

TEST_F(HttpServerTest, ModelsTokenizeHealthAndMetrics) {
  httplib::Client client = Client();
  httplib::Result models = client.Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  const json listing = json::parse(models->body);
  EXPECT_EQ(listing["data"][0]["id"], kModel);
  EXPECT_EQ(listing["data"][0]["max_model_len"], kContext);
  EXPECT_EQ(listing["data"][0]["kv_cache"]["tokens"], 8192);
  EXPECT_EQ(listing["data"][0]["kv_cache"]["groups"][0]["tokens_per_replica"], 4096);

  auto [status, tokens] = Post("/tokenize", R"({"prompt": "Hello"})");
  ASSERT_EQ(status, 200) << tokens;
  const std::vector<int32_t> hello = WithBos("Hello");
  EXPECT_EQ(tokens, json({{"tokens", hello}, {"count", hello.size()}, {"max_model_len", kContext}}));
  std::tie(status, tokens) = Post("/tokenize", R"({"messages": [{"role": "user", "content": "What is MLA?"}]})");
  ASSERT_EQ(status, 200) << tokens;
  EXPECT_EQ(tokens["tokens"], json::parse("[0, 2, 58, 75, 546, 224, 76, 86, 224, 48, 47, 36, 34, 3]"));

  httplib::Result health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  engine_->set_serving(false);
  health = client.Get("/health");
  ASSERT_TRUE(health);
  ExpectError({health->status, json::parse(health->body, nullptr, false)}, 503, "service_unavailable_error");

  metrics_.CountFinished(FinishReason::kStop);
  httplib::Result metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->get_header_value("Content-Type"), "text/plain; version=0.0.4");
  EXPECT_THAT(metrics->body, HasSubstr("mlaserve_requests_total{outcome=\"stop\"} 1"));
}

TEST_F(HttpServerTest, StartTwiceFailsAndStopIsIdempotent) {
  EXPECT_EQ(server_->Start("127.0.0.1", 0).code(), absl::StatusCode::kFailedPrecondition);
  server_->Stop();
  server_->Stop();
}

}  // namespace
}  // namespace mlaserve
