#include "coordinator/api/openai_protocol.h"

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tokenizer/chat_template.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mlaserve {
namespace {

using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

constexpr char kModelDir[] = "tests/testdata/tiny-deepseek-v3/";
constexpr char kModel[] = "tiny-deepseek-v3";
constexpr int64_t kContext = 64;

// Only what request parsing reads: the tokenizer, config, name and context.
class ModelOnlyEngine : public Engine {
 public:
  ModelOnlyEngine(std::unique_ptr<Tokenizer> tokenizer, ModelConfig config)
      : tokenizer_(std::move(tokenizer)), config_(std::move(config)) {}

  absl::StatusOr<int64_t> Submit(GenerateInput, UpdateCallback) override {
    return absl::UnimplementedError("parsing only");
  }
  void Cancel(int64_t) override {}
  const Tokenizer& tokenizer() const override { return *tokenizer_; }
  const ModelConfig& model_config() const override { return config_; }
  const std::string& model_name() const override { return name_; }
  int64_t max_context() const override { return kContext; }
  std::vector<GroupKvCapacity> KvCapacity() const override { return {}; }
  EngineHealth Health() const override { return {}; }

 private:
  std::unique_ptr<Tokenizer> tokenizer_;
  ModelConfig config_;
  std::string name_ = kModel;
};

class OpenAiProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
        Tokenizer::FromFile(std::string(kModelDir) + "tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    absl::StatusOr<ModelConfig> config = LoadModelConfig(std::string(kModelDir) + "config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    engine_ = std::make_unique<ModelOnlyEngine>(*std::move(tokenizer), *config);
  }

  absl::StatusOr<ApiRequest> Parse(ApiKind kind, const std::string& body) {
    absl::StatusOr<json> parsed = ParseBody(body);
    if (!parsed.ok()) return parsed.status();
    return ParseGenerateRequest(kind, *parsed, *engine_);
  }

  ApiRequest ParseOk(ApiKind kind, const std::string& body) {
    absl::StatusOr<ApiRequest> request = Parse(kind, body);
    EXPECT_TRUE(request.ok()) << body << ": " << request.status();
    return request.ok() ? *std::move(request) : ApiRequest{};
  }

  std::vector<int32_t> Encode(const std::string& text) const { return engine_->tokenizer().Encode(text); }

  std::unique_ptr<ModelOnlyEngine> engine_;
};

TEST_F(OpenAiProtocolTest, TextPromptGetsTheBosTokenAndOpenAiDefaults) {
  const ApiRequest request = ParseOk(ApiKind::kCompletion, R"({"model": "tiny-deepseek-v3", "prompt": "Hello"})");
  std::vector<int32_t> expected = Encode("Hello");
  expected.insert(expected.begin(), 0);
  EXPECT_EQ(request.input.prompt_ids, expected);
  EXPECT_EQ(request.input.sampling.max_tokens, 16);
  EXPECT_EQ(request.input.sampling.temperature, 1.0f);
  EXPECT_EQ(request.input.sampling.top_p, 1.0f);
  EXPECT_EQ(request.input.sampling.top_k, 0);
  EXPECT_FALSE(request.input.sampling.seed.has_value());
  EXPECT_FALSE(request.stream);
  EXPECT_FALSE(request.include_usage);
}

TEST_F(OpenAiProtocolTest, TextStartingWithTheBosTextKeepsOneBosToken) {
  const ApiRequest request = ParseOk(ApiKind::kCompletion, R"({"prompt": "<｜begin▁of▁sentence｜>Hi"})");
  EXPECT_EQ(request.input.prompt_ids, Encode("<｜begin▁of▁sentence｜>Hi"));
  EXPECT_EQ(request.input.prompt_ids.front(), 0);
  EXPECT_NE(request.input.prompt_ids[1], 0);
}

TEST_F(OpenAiProtocolTest, PromptFormsAcceptedAsVllmAcceptsThem) {
  std::vector<int32_t> hello = Encode("Hello");
  hello.insert(hello.begin(), 0);
  EXPECT_EQ(ParseOk(ApiKind::kCompletion, R"({"prompt": ["Hello"]})").input.prompt_ids, hello);
  EXPECT_THAT(ParseOk(ApiKind::kCompletion, R"({"prompt": [5, 6, 7]})").input.prompt_ids, ElementsAre(5, 6, 7));
  EXPECT_THAT(ParseOk(ApiKind::kCompletion, R"({"prompt": [[5, 6]]})").input.prompt_ids, ElementsAre(5, 6));
}

TEST_F(OpenAiProtocolTest, SamplingFieldsMapOntoTheEngine) {
  const ApiRequest request = ParseOk(ApiKind::kCompletion, R"({
      "prompt": [1, 2], "max_tokens": 5, "temperature": 0, "top_p": 0.5, "top_k": -1, "seed": -1,
      "stop": "\n", "stop_token_ids": [7, 8], "ignore_eos": true, "stream": true,
      "stream_options": {"include_usage": true}, "n": 1, "best_of": 1, "echo": false, "logprobs": null,
      "presence_penalty": 0, "frequency_penalty": 0.0, "user": "someone", "unknown_field": {"x": 1}})");
  const SamplingOptions& s = request.input.sampling;
  EXPECT_EQ(s.max_tokens, 5);
  EXPECT_EQ(s.temperature, 0.0f);
  EXPECT_EQ(s.top_p, 0.5f);
  EXPECT_EQ(s.top_k, 0);
  EXPECT_EQ(s.seed, UINT64_MAX);
  EXPECT_THAT(s.stop, ElementsAre("\n"));
  EXPECT_THAT(s.stop_token_ids, ElementsAre(7, 8));
  EXPECT_TRUE(s.ignore_eos);
  EXPECT_TRUE(request.stream);
  EXPECT_TRUE(request.include_usage);
}

TEST_F(OpenAiProtocolTest, StopArraysDropEmptyStrings) {
  EXPECT_THAT(
      ParseOk(ApiKind::kCompletion, R"({"prompt": "a", "stop": ["x", "", "yz"], "top_k": 40})").input.sampling.stop,
      ElementsAre("x", "yz"));
  EXPECT_EQ(ParseOk(ApiKind::kCompletion, R"({"prompt": "a", "top_k": 40})").input.sampling.top_k, 40);
}

TEST_F(OpenAiProtocolTest, ChatPromptIsTheTemplateAndMaxTokensFillsTheContext) {
  const ApiRequest request = ParseOk(ApiKind::kChat, R"({"messages": [
      {"role": "system", "content": "Be terse."},
      {"role": "user", "content": [{"type": "text", "text": "What"}, {"type": "text", "text": "is MLA?"}]}]})");
  const std::vector<int32_t> expected =
      EncodeChat(engine_->tokenizer(), engine_->model_config(),
                 {{ChatRole::kSystem, "Be terse."}, {ChatRole::kUser, "What\nis MLA?"}});
  EXPECT_EQ(request.input.prompt_ids, expected);
  EXPECT_EQ(request.input.sampling.max_tokens, kContext - static_cast<int64_t>(expected.size()));
}

TEST_F(OpenAiProtocolTest, ChatPrefersMaxCompletionTokens) {
  EXPECT_EQ(ParseOk(ApiKind::kChat, R"({"messages": [{"role": "user", "content": "hi"}],
                                        "max_tokens": 3, "max_completion_tokens": 4})")
                .input.sampling.max_tokens,
            4);
  EXPECT_EQ(ParseOk(ApiKind::kChat, R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})")
                .input.sampling.max_tokens,
            3);
}

TEST_F(OpenAiProtocolTest, LogprobsAreTheNumberOfAlternatives) {
  EXPECT_EQ(ParseOk(ApiKind::kCompletion, R"({"prompt": "a"})").input.sampling.logprobs, -1);
  EXPECT_EQ(ParseOk(ApiKind::kCompletion, R"({"prompt": "a", "logprobs": 0})").input.sampling.logprobs, 0);
  EXPECT_EQ(ParseOk(ApiKind::kCompletion, R"({"prompt": "a", "logprobs": 20})").input.sampling.logprobs, 20);
  const std::string messages = R"("messages": [{"role": "user", "content": "a"}])";
  EXPECT_EQ(ParseOk(ApiKind::kChat, "{" + messages + "}").input.sampling.logprobs, -1);
  EXPECT_EQ(ParseOk(ApiKind::kChat, "{" + messages + R"(, "logprobs": false})").input.sampling.logprobs, -1);
  EXPECT_EQ(ParseOk(ApiKind::kChat, "{" + messages + R"(, "logprobs": true})").input.sampling.logprobs, 0);
  EXPECT_EQ(ParseOk(ApiKind::kChat, "{" + messages + R"(, "logprobs": true, "top_logprobs": 5})").input.sampling.logprobs,
            5);
  EXPECT_EQ(ParseOk(ApiKind::kChat, "{" + messages + R"(, "top_logprobs": null})").input.sampling.logprobs, -1);
}

struct BadRequest {
  ApiKind kind;
  std::string body;
  absl::StatusCode code;
  std::string param;  // empty: null
};

TEST_F(OpenAiProtocolTest, RejectsBadRequestsNamingTheField) {
  const ApiKind c = ApiKind::kCompletion;
  const ApiKind chat = ApiKind::kChat;
  const absl::StatusCode invalid = absl::StatusCode::kInvalidArgument;
  const std::string long_chat =
      absl::StrCat(R"({"messages": [{"role": "user", "content": ")", std::string(200, 'x'), R"("}]})");
  const std::vector<BadRequest> cases = {
      {c, "{", invalid, ""},
      {c, "[1, 2]", invalid, ""},
      {c, R"({"model": 3, "prompt": "a"})", invalid, "model"},
      {c, R"({"model": "gpt-4", "prompt": "a"})", absl::StatusCode::kNotFound, "model"},
      {c, R"({})", invalid, "prompt"},
      {c, R"({"prompt": ""})", invalid, "prompt"},
      {c, R"({"prompt": []})", invalid, "prompt"},
      {c, R"({"prompt": [[]]})", invalid, "prompt"},
      {c, R"({"prompt": 7})", invalid, "prompt"},
      {c, R"({"prompt": ["a", "b"]})", invalid, "prompt"},
      {c, R"({"prompt": [[1], [2]]})", invalid, "prompt"},
      {c, R"({"prompt": [1, -2]})", invalid, "prompt"},
      {c, R"({"prompt": [1, 2.5]})", invalid, "prompt"},
      {c, R"({"prompt": [1, "a"]})", invalid, "prompt"},
      {c, R"({"prompt": [4294967296]})", invalid, "prompt"},
      {c, R"({"prompt": "a", "max_tokens": 0})", invalid, "max_tokens"},
      {c, R"({"prompt": "a", "max_tokens": "5"})", invalid, "max_tokens"},
      {c, R"({"prompt": "a", "max_tokens": 18446744073709551615})", invalid, "max_tokens"},
      {c, R"({"prompt": "a", "temperature": 2.5})", invalid, "temperature"},
      {c, R"({"prompt": "a", "temperature": -0.1})", invalid, "temperature"},
      {c, R"({"prompt": "a", "temperature": "hot"})", invalid, "temperature"},
      {c, R"({"prompt": "a", "top_p": 0})", invalid, "top_p"},
      {c, R"({"prompt": "a", "top_p": 1.01})", invalid, "top_p"},
      {c, R"({"prompt": "a", "top_k": -2})", invalid, "top_k"},
      {c, R"({"prompt": "a", "top_k": 1.5})", invalid, "top_k"},
      {c, R"({"prompt": "a", "seed": 1.5})", invalid, "seed"},
      {c, R"({"prompt": "a", "stop": 3})", invalid, "stop"},
      {c, R"({"prompt": "a", "stop": ["a", 3]})", invalid, "stop"},
      {c, R"({"prompt": "a", "stop_token_ids": 3})", invalid, "stop_token_ids"},
      {c, R"({"prompt": "a", "stop_token_ids": [-1]})", invalid, "stop_token_ids"},
      {c, R"({"prompt": "a", "ignore_eos": 1})", invalid, "ignore_eos"},
      {c, R"({"prompt": "a", "stream": "yes"})", invalid, "stream"},
      {c, R"({"prompt": "a", "stream_options": {"include_usage": true}})", invalid, "stream_options"},
      {c, R"({"prompt": "a", "stream": true, "stream_options": 1})", invalid, "stream_options"},
      {c, R"({"prompt": "a", "stream": true, "stream_options": {"include_usage": 1}})", invalid,
       "stream_options.include_usage"},
      {c, R"({"prompt": "a", "n": 2})", invalid, "n"},
      {c, R"({"prompt": "a", "n": "1"})", invalid, "n"},
      {c, R"({"prompt": "a", "best_of": 2})", invalid, "best_of"},
      {c, R"({"prompt": "a", "echo": true})", invalid, "echo"},
      {c, R"({"prompt": "a", "logprobs": 21})", invalid, "logprobs"},
      {c, R"({"prompt": "a", "logprobs": -1})", invalid, "logprobs"},
      {c, R"({"prompt": "a", "logprobs": true})", invalid, "logprobs"},
      {c, R"({"prompt": "a", "logprobs": "5"})", invalid, "logprobs"},
      {c, R"({"prompt": "a", "logprobs": 1.5})", invalid, "logprobs"},
      {c, R"({"prompt": "a", "presence_penalty": 0.5})", invalid, "presence_penalty"},
      {c, R"({"prompt": "a", "frequency_penalty": "0"})", invalid, "frequency_penalty"},
      {chat, R"({})", invalid, "messages"},
      {chat, R"({"messages": []})", invalid, "messages"},
      {chat, R"({"messages": "hi"})", invalid, "messages"},
      {chat, R"({"messages": ["hi"]})", invalid, "messages[0]"},
      {chat, R"({"messages": [{"content": "hi"}]})", invalid, "messages[0].role"},
      {chat, R"({"messages": [{"role": "tool", "content": "hi"}]})", invalid, "messages[0].role"},
      {chat, R"({"messages": [{"role": "function", "content": "hi"}]})", invalid, "messages[0].role"},
      {chat, R"({"messages": [{"role": "user"}]})", invalid, "messages[0].content"},
      {chat, R"({"messages": [{"role": "user", "content": 5}]})", invalid, "messages[0].content"},
      {chat,
       R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "image_url"}]}]})",
       invalid, "messages[1].content"},
      {chat, R"({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]})", invalid,
       "messages[0].content"},
      {chat, R"({"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0})", invalid,
       "max_completion_tokens"},
      {chat, R"({"messages": [{"role": "user", "content": "a"}], "logprobs": 1})", invalid, "logprobs"},
      {chat, R"({"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2})", invalid, "top_logprobs"},
      {chat, R"({"messages": [{"role": "user", "content": "a"}], "logprobs": false, "top_logprobs": 0})", invalid,
       "top_logprobs"},
      {chat, R"({"messages": [{"role": "user", "content": "a"}], "logprobs": true, "top_logprobs": 21})", invalid,
       "top_logprobs"},
      {chat, R"({"messages": [{"role": "user", "content": "a"}], "logprobs": true, "top_logprobs": -1})", invalid,
       "top_logprobs"},
      {chat, R"({"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]})", invalid, "tools"},
      {chat, long_chat, invalid, "messages"},
  };
  for (const BadRequest& bad : cases) {
    const absl::StatusOr<ApiRequest> request = Parse(bad.kind, bad.body);
    ASSERT_FALSE(request.ok()) << bad.body;
    EXPECT_EQ(request.status().code(), bad.code) << bad.body << ": " << request.status();
    const json error = ToApiError(request.status()).body["error"];
    EXPECT_EQ(error["param"], bad.param.empty() ? json(nullptr) : json(bad.param)) << bad.body;
    EXPECT_FALSE(error["message"].get<std::string>().empty()) << bad.body;
  }
}

TEST_F(OpenAiProtocolTest, UnknownModelIsANotFoundErrorWithItsCode) {
  const absl::StatusOr<ApiRequest> request = Parse(ApiKind::kChat, R"({"model": "x", "messages": []})");
  ASSERT_FALSE(request.ok());
  const ApiError error = ToApiError(request.status());
  EXPECT_EQ(error.http_status, 404);
  EXPECT_EQ(error.body["error"]["type"], "not_found_error");
  EXPECT_EQ(error.body["error"]["code"], "model_not_found");
  EXPECT_EQ(error.body["error"]["param"], "model");
}

TEST_F(OpenAiProtocolTest, TokenizeTakesAPromptOrMessages) {
  absl::StatusOr<std::vector<int32_t>> ids = ParseTokenizeRequest(json{{"prompt", "Hello"}}, *engine_);
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::vector<int32_t> expected = Encode("Hello");
  expected.insert(expected.begin(), 0);
  EXPECT_EQ(*ids, expected);

  ids = ParseTokenizeRequest(json::parse(R"({"messages": [{"role": "user", "content": "What is MLA?"}]})"), *engine_);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(0, 2, 58, 75, 546, 224, 76, 86, 224, 48, 47, 36, 34, 3));

  EXPECT_EQ(ParseTokenizeRequest(json::object(), *engine_).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseTokenizeRequest(json{{"model", "y"}, {"prompt", "a"}}, *engine_).status().code(),
            absl::StatusCode::kNotFound);
}

GenerateUpdate FinalUpdate(FinishReason reason, const std::string& text) {
  GenerateUpdate update;
  update.text = text;
  update.finish_reason = reason;
  update.prompt_tokens = 7;
  update.completion_tokens = 3;
  update.cached_prompt_tokens = 4;
  return update;
}

TEST(ResponseTest, CompletionResponseHasOpenAisShape) {
  const ResponseHeader header = NewResponseHeader(ApiKind::kCompletion, kModel);
  EXPECT_THAT(header.id, StartsWith("cmpl-"));
  const json response = BuildResponse(header, "abc", FinalUpdate(FinishReason::kLength, "c"));
  EXPECT_EQ(response["id"], header.id);
  EXPECT_EQ(response["object"], "text_completion");
  EXPECT_EQ(response["created"], header.created);
  EXPECT_EQ(response["model"], kModel);
  EXPECT_EQ(response["choices"], json::parse(R"([{"index": 0, "text": "abc", "finish_reason": "length",
                                                  "logprobs": null}])"));
  EXPECT_EQ(response["usage"], json::parse(R"({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                                               "prompt_tokens_details": {"cached_tokens": 4}})"));
}

TEST(ResponseTest, ChatResponseHasOpenAisShape) {
  const ResponseHeader header = NewResponseHeader(ApiKind::kChat, kModel);
  EXPECT_THAT(header.id, StartsWith("chatcmpl-"));
  EXPECT_NE(header.id, NewResponseHeader(ApiKind::kChat, kModel).id);
  const json response = BuildResponse(header, "abc", FinalUpdate(FinishReason::kStop, ""));
  EXPECT_EQ(response["object"], "chat.completion");
  EXPECT_EQ(response["choices"], json::parse(R"([{"index": 0, "message": {"role": "assistant", "content": "abc"},
                                                  "finish_reason": "stop", "logprobs": null}])"));
  EXPECT_EQ(response["usage"]["total_tokens"], 10);
}

TEST(ResponseTest, CompletionChunks) {
  const ResponseHeader header = NewResponseHeader(ApiKind::kCompletion, kModel);
  GenerateUpdate update;
  update.text = "ab";
  json chunk = BuildChunk(header, update, /*include_usage=*/false);
  EXPECT_EQ(chunk["object"], "text_completion");
  EXPECT_EQ(chunk["id"], header.id);
  EXPECT_EQ(chunk["choices"], json::parse(R"([{"index": 0, "text": "ab", "finish_reason": null, "logprobs": null}])"));
  EXPECT_FALSE(chunk.contains("usage"));
  chunk = BuildChunk(header, FinalUpdate(FinishReason::kStop, ""), /*include_usage=*/true);
  EXPECT_EQ(chunk["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(chunk["choices"][0]["text"], "");
  EXPECT_TRUE(chunk["usage"].is_null());
}

TEST(ResponseTest, ChatChunks) {
  const ResponseHeader header = NewResponseHeader(ApiKind::kChat, kModel);
  json chunk = BuildRoleChunk(header, /*include_usage=*/false);
  EXPECT_EQ(chunk["object"], "chat.completion.chunk");
  EXPECT_EQ(chunk["choices"][0]["delta"], json::parse(R"({"role": "assistant", "content": ""})"));
  GenerateUpdate update;
  update.text = "ab";
  EXPECT_EQ(BuildChunk(header, update, false)["choices"][0]["delta"], json::parse(R"({"content": "ab"})"));
  chunk = BuildChunk(header, FinalUpdate(FinishReason::kLength, ""), false);
  EXPECT_EQ(chunk["choices"][0]["delta"], json::object());
  EXPECT_EQ(chunk["choices"][0]["finish_reason"], "length");
  chunk = BuildUsageChunk(header, FinalUpdate(FinishReason::kLength, ""));
  EXPECT_THAT(chunk["choices"], IsEmpty());
  EXPECT_EQ(chunk["usage"]["completion_tokens"], 3);
}

// Tokens of the fixture: 'a' and 'b', a lone byte 0xE5 (the start of a
// character, invalid alone) and "好" (0xE5 0xA5 0xBD).
constexpr int32_t kA = 68, kB = 69, kByteE5 = 165, kHao = 325;

std::vector<TokenLogprobs> SampleLogprobs() {
  return {{kA, -0.5f, {kA, kB}, {-0.5f, -1.5f}},
          {kByteE5, -2.0f, {kHao}, {-0.25f}},
          {kHao, -0.125f, {}, {}},
          {kB, -std::numeric_limits<float>::infinity(), {kA, kByteE5}, {-0.5f, -0.75f}}};
}

TEST_F(OpenAiProtocolTest, CompletionLogprobsMapTokenTextsAndCountOffsets) {
  int64_t offset = 3;
  const json logprobs = BuildLogprobs(ApiKind::kCompletion, engine_->tokenizer(), SampleLogprobs(), &offset);
  // The sampled token is always among the top_logprobs; -inf is sent as -9999.
  EXPECT_EQ(logprobs, json::parse(R"({
      "tokens": ["a", "\ufffd", "好", "b"],
      "token_logprobs": [-0.5, -2.0, -0.125, -9999.0],
      "top_logprobs": [{"a": -0.5, "b": -1.5}, {"\ufffd": -2.0, "好": -0.25}, {"好": -0.125},
                       {"b": -9999.0, "a": -0.5, "\ufffd": -0.75}],
      "text_offset": [3, 4, 5, 6]})"));
  EXPECT_EQ(offset, 7);
  EXPECT_EQ(BuildLogprobs(ApiKind::kCompletion, engine_->tokenizer(), {}, &offset),
            json::parse(R"({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []})"));
}

TEST_F(OpenAiProtocolTest, CompletionTopLogprobsKeepTheSampledTokensOwnValueForASharedText) {
  int64_t offset = 0;
  // 0xE4 and 0xE5 both read as U+FFFD alone.
  const std::vector<TokenLogprobs> logprobs = {{kByteE5, -3.0f, {164, kByteE5}, {-1.0f, -3.0f}}};
  EXPECT_EQ(BuildLogprobs(ApiKind::kCompletion, engine_->tokenizer(), logprobs, &offset)["top_logprobs"],
            json::parse(R"([{"\ufffd": -3.0}])"));
}

TEST_F(OpenAiProtocolTest, ChatLogprobsCarryTokensBytesAndAlternatives) {
  int64_t offset = 0;
  const std::vector<TokenLogprobs> logprobs = SampleLogprobs();
  const json built =
      BuildLogprobs(ApiKind::kChat, engine_->tokenizer(), absl::MakeConstSpan(logprobs).subspan(0, 3), &offset);
  EXPECT_EQ(built, json::parse(R"({"content": [
      {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [
          {"token": "a", "logprob": -0.5, "bytes": [97]}, {"token": "b", "logprob": -1.5, "bytes": [98]}]},
      {"token": "\ufffd", "logprob": -2.0, "bytes": [229], "top_logprobs": [
          {"token": "好", "logprob": -0.25, "bytes": [229, 165, 189]}]},
      {"token": "好", "logprob": -0.125, "bytes": [229, 165, 189], "top_logprobs": []}]})"));
}

TEST_F(OpenAiProtocolTest, ResponsesAndChunksCarryTheLogprobsGiven) {
  int64_t offset = 0;
  const std::vector<TokenLogprobs> logprobs = {SampleLogprobs()[0]};
  for (ApiKind kind : {ApiKind::kCompletion, ApiKind::kChat}) {
    const ResponseHeader header = NewResponseHeader(kind, kModel);
    const json built = BuildLogprobs(kind, engine_->tokenizer(), logprobs, &offset);
    EXPECT_EQ(BuildResponse(header, "a", FinalUpdate(FinishReason::kLength, "a"), built)["choices"][0]["logprobs"],
              built);
    GenerateUpdate update;
    update.text = "a";
    EXPECT_EQ(BuildChunk(header, update, false, built)["choices"][0]["logprobs"], built);
    EXPECT_TRUE(BuildChunk(header, update, false)["choices"][0]["logprobs"].is_null());
  }
}

TEST(ResponseTest, TokenizeAndModels) {
  EXPECT_EQ(BuildTokenizeResponse({0, 5}, 64), json::parse(R"({"tokens": [0, 5], "count": 2, "max_model_len": 64})"));
  // Two groups: one of 4 attention replicas of 1000 tokens, one of a single
  // replica of 3000.
  const json models = BuildModelsResponse(kModel, 64, {{0, 4, 1000}, {8, 1, 3000}});
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 1u);
  EXPECT_EQ(models["data"][0]["id"], kModel);
  EXPECT_EQ(models["data"][0]["object"], "model");
  EXPECT_EQ(models["data"][0]["max_model_len"], 64);
  const json& kv = models["data"][0]["kv_cache"];
  EXPECT_EQ(kv["tokens"], 7000);
  EXPECT_DOUBLE_EQ(kv["max_concurrency"].get<double>(), 7000.0 / 64);
  EXPECT_EQ(kv["groups"], json::parse(R"([{"group": 0, "replicas": 4, "tokens_per_replica": 1000, "tokens": 4000},
                                         {"group": 8, "replicas": 1, "tokens_per_replica": 3000, "tokens": 3000}])"));
}

TEST(ErrorTest, StatusCodesMapToHttpStatusesAndTypes) {
  struct Case {
    absl::Status status;
    int http_status;
    std::string type;
  };
  const std::vector<Case> cases = {
      {absl::InvalidArgumentError("m"), 400, "invalid_request_error"},
      {absl::NotFoundError("m"), 404, "not_found_error"},
      {absl::ResourceExhaustedError("m"), 429, "rate_limit_exceeded"},
      {absl::UnavailableError("m"), 503, "service_unavailable_error"},
      {absl::InternalError("m"), 500, "server_error"},
      {absl::DeadlineExceededError("m"), 500, "server_error"},
  };
  for (const Case& c : cases) {
    const ApiError error = ToApiError(c.status);
    EXPECT_EQ(error.http_status, c.http_status) << c.status;
    EXPECT_EQ(error.body,
              json({{"error", {{"message", "m"}, {"type", c.type}, {"param", nullptr}, {"code", nullptr}}}}))
        << c.status;
  }
  const ApiError too_large = HttpError(413, "too big");
  EXPECT_EQ(too_large.http_status, 413);
  EXPECT_EQ(too_large.body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(too_large.body["error"]["message"], "too big");
}

TEST(ErrorTest, FinalStatusHidesAbortsFromClients) {
  EXPECT_TRUE(FinalStatus(FinalUpdate(FinishReason::kStop, "")).ok());
  EXPECT_TRUE(FinalStatus(FinalUpdate(FinishReason::kLength, "")).ok());
  EXPECT_EQ(FinalStatus(FinalUpdate(FinishReason::kAbort, "")).code(), absl::StatusCode::kUnavailable);
  GenerateUpdate failed = FinalUpdate(FinishReason::kError, "");
  failed.error = absl::InvalidArgumentError("bad id");
  EXPECT_EQ(FinalStatus(failed), failed.error);
  failed.error = absl::OkStatus();
  EXPECT_EQ(FinalStatus(failed).code(), absl::StatusCode::kInternal);
}

TEST(SerializeTest, ReplacesInvalidUtf8) {
  EXPECT_EQ(Serialize(json{{"text", "a\xff"}}), "{\"text\":\"a\xEF\xBF\xBD\"}");
}

TEST(ParseBodyTest, RefusesNestingPastTheLimitBeforeParsing) {
  const std::string deep = std::string(4 << 20, '[') + std::string(4 << 20, ']');
  EXPECT_EQ(ParseBody(deep).status().code(), absl::StatusCode::kInvalidArgument);
  auto nested = [](int depth) {  // an object whose "prompt" nests depth - 1 arrays
    return R"({"prompt": )" + std::string(depth - 1, '[') + std::string(depth - 1, ']') + "}";
  };
  EXPECT_TRUE(ParseBody(nested(kMaxJsonDepth)).ok());
  const absl::Status too_deep = ParseBody(nested(kMaxJsonDepth + 1)).status();
  EXPECT_EQ(too_deep.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(too_deep.message()), HasSubstr("deeper than 64"));
  // Brackets inside strings, escaped quotes included, are text.
  const std::string text = R"({"prompt": "[[[[\"[[[)" + std::string(1000, '[') + R"("})";
  absl::StatusOr<json> body = ParseBody(text);
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ((*body)["prompt"].get<std::string>().size(), 1000 + 8);
}

}  // namespace
}  // namespace mlaserve
