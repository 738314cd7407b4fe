#include "coordinator/api/openai_protocol.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/prompt.h"

namespace mlaserve {
namespace {

using json = nlohmann::json;

// OpenAI's `param` and `code` travel with a Status as payloads.
constexpr char kParamPayload[] = "type.mlaserve/openai.param";
constexpr char kCodePayload[] = "type.mlaserve/openai.code";

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

absl::Status InvalidParam(absl::string_view param, absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kParamPayload, absl::Cord(param));
  return status;
}

// A field's value, or nullptr when it is absent or null: clients send null
// to mean "the default".
const json* Field(const json& object, const char* name) {
  const auto it = object.find(name);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

absl::StatusOr<int64_t> ToInt(const json& value, absl::string_view param, int64_t min, int64_t max) {
  const std::string range = absl::StrCat("`", param, "` must be an integer in [", min, ", ", max, "]");
  if (!value.is_number_integer()) return InvalidParam(param, range);
  if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(max)) {
    return InvalidParam(param, range);
  }
  const int64_t n = value.get<int64_t>();
  if (n < min || n > max) return InvalidParam(param, range);
  return n;
}

// Sets *out when the field is present; leaves it alone otherwise.
absl::Status ReadBool(const json& body, const char* name, bool* out) {
  const json* value = Field(body, name);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_boolean()) return InvalidParam(name, absl::StrCat("`", name, "` must be a boolean"));
  *out = value->get<bool>();
  return absl::OkStatus();
}

// Sets *out to a number in [min, max] (or (min, max] when min is exclusive).
absl::Status ReadNumber(const json& body, const char* name, double min, bool min_exclusive, double max, float* out) {
  const json* value = Field(body, name);
  if (value == nullptr) return absl::OkStatus();
  const std::string range =
      absl::StrCat("`", name, "` must be a number in ", min_exclusive ? "(" : "[", min, ", ", max, "]");
  if (!value->is_number()) return InvalidParam(name, range);
  const double x = value->get<double>();
  if (!(min_exclusive ? x > min : x >= min) || !(x <= max)) return InvalidParam(name, range);
  *out = static_cast<float>(x);
  return absl::OkStatus();
}

absl::Status ReadInt32(const json& body, const char* name, int64_t min, int64_t max, int32_t* out) {
  const json* value = Field(body, name);
  if (value == nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(const int64_t n, ToInt(*value, name, min, max));
  *out = static_cast<int32_t>(n);
  return absl::OkStatus();
}

// Any 64-bit integer, negative ones wrapping, as vLLM takes any Python int.
absl::Status ReadSeed(const json& body, std::optional<uint64_t>* seed) {
  const json* value = Field(body, "seed");
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_number_integer()) return InvalidParam("seed", "`seed` must be an integer");
  *seed = value->is_number_unsigned() ? value->get<uint64_t>() : static_cast<uint64_t>(value->get<int64_t>());
  return absl::OkStatus();
}

// A string or an array of strings. Empty strings would stop at once, so they
// are dropped, as vLLM does.
absl::Status ReadStop(const json& body, std::vector<std::string>* stop) {
  const json* value = Field(body, "stop");
  if (value == nullptr) return absl::OkStatus();
  const absl::Status wrong_type = InvalidParam("stop", "`stop` must be a string or an array of strings");
  if (value->is_string()) {
    if (!value->get_ref<const std::string&>().empty()) stop->push_back(value->get<std::string>());
    return absl::OkStatus();
  }
  if (!value->is_array()) return wrong_type;
  for (const json& item : *value) {
    if (!item.is_string()) return wrong_type;
    if (!item.get_ref<const std::string&>().empty()) stop->push_back(item.get<std::string>());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> ToTokenIds(const json& value, absl::string_view param) {
  if (!value.is_array()) return InvalidParam(param, absl::StrCat("`", param, "` must be an array of token ids"));
  std::vector<int32_t> ids;
  ids.reserve(value.size());
  for (const json& item : value) {
    ASSIGN_OR_RETURN(const int64_t id, ToInt(item, param, 0, kInt32Max));
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

absl::Status ReadStopTokenIds(const json& body, std::vector<int32_t>* ids) {
  const json* value = Field(body, "stop_token_ids");
  if (value == nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(*ids, ToTokenIds(*value, "stop_token_ids"));
  return absl::OkStatus();
}

// JavaScript's (and Python's) truthiness: what "set" means for flags like echo.
bool Truthy(const json& value) {
  if (value.is_null()) return false;
  if (value.is_boolean()) return value.get<bool>();
  if (value.is_number()) return value.get<double>() != 0;
  return !value.empty();
}

absl::Status RejectUnsupported(ApiKind kind, const json& body) {
  static const char* const kCompletionOnly[] = {"echo", "suffix", "logit_bias"};
  static const char* const kChatOnly[] = {"logit_bias", "tools"};
  for (const char* name :
       kind == ApiKind::kCompletion ? absl::MakeConstSpan(kCompletionOnly) : absl::MakeConstSpan(kChatOnly)) {
    const json* value = Field(body, name);
    if (value != nullptr && Truthy(*value)) {
      return InvalidParam(name, absl::StrCat("`", name, "` is not supported"));
    }
  }
  // best_of and n of 1 are the defaults; anything else needs several sequences.
  for (const char* name : {"n", "best_of"}) {
    const json* value = Field(body, name);
    if (value != nullptr && (!value->is_number_integer() || value->get<int64_t>() != 1)) {
      return InvalidParam(name, absl::StrCat("only `", name, "` = 1 is supported"));
    }
  }
  for (const char* name : {"presence_penalty", "frequency_penalty"}) {
    const json* value = Field(body, name);
    if (value != nullptr && (!value->is_number() || value->get<double>() != 0)) {
      return InvalidParam(name, absl::StrCat("only `", name, "` = 0 is supported"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckModel(const json& body, const Engine& engine) {
  const json* model = Field(body, "model");
  if (model == nullptr) return absl::OkStatus();
  if (!model->is_string()) return InvalidParam("model", "`model` must be a string");
  if (model->get_ref<const std::string&>() == engine.model_name()) return absl::OkStatus();
  absl::Status status =
      absl::NotFoundError(absl::StrCat("The model `", model->get_ref<const std::string&>(),
                                       "` does not exist; this server serves `", engine.model_name(), "`."));
  status.SetPayload(kParamPayload, absl::Cord("model"));
  status.SetPayload(kCodePayload, absl::Cord("model_not_found"));
  return status;
}

// top_k: vLLM's -1 for "no limit" is the engine's 0.
absl::Status ReadTopK(const json& body, int32_t* top_k) {
  RETURN_IF_ERROR(ReadInt32(body, "top_k", -1, kInt32Max, top_k));
  if (*top_k < 0) *top_k = 0;
  return absl::OkStatus();
}

absl::Status ReadSampling(const json& body, SamplingOptions* sampling) {
  RETURN_IF_ERROR(ReadNumber(body, "temperature", 0.0, false, 2.0, &sampling->temperature));
  RETURN_IF_ERROR(ReadNumber(body, "top_p", 0.0, true, 1.0, &sampling->top_p));
  RETURN_IF_ERROR(ReadTopK(body, &sampling->top_k));
  RETURN_IF_ERROR(ReadSeed(body, &sampling->seed));
  RETURN_IF_ERROR(ReadStop(body, &sampling->stop));
  RETURN_IF_ERROR(ReadStopTokenIds(body, &sampling->stop_token_ids));
  return ReadBool(body, "ignore_eos", &sampling->ignore_eos);
}

// Completions take the number of alternatives as `logprobs`; chat takes a
// `logprobs` flag and the number as `top_logprobs`, which needs the flag.
absl::Status ReadLogprobs(ApiKind kind, const json& body, int32_t* logprobs) {
  if (kind == ApiKind::kCompletion) return ReadInt32(body, "logprobs", 0, kMaxLogprobs, logprobs);
  bool wanted = false;
  RETURN_IF_ERROR(ReadBool(body, "logprobs", &wanted));
  int32_t top = 0;
  RETURN_IF_ERROR(ReadInt32(body, "top_logprobs", 0, kMaxLogprobs, &top));
  if (Field(body, "top_logprobs") != nullptr && !wanted) {
    return InvalidParam("top_logprobs", "`top_logprobs` requires `logprobs` to be true");
  }
  if (wanted) *logprobs = top;
  return absl::OkStatus();
}

absl::Status ReadStreaming(const json& body, ApiRequest* request) {
  RETURN_IF_ERROR(ReadBool(body, "stream", &request->stream));
  const json* options = Field(body, "stream_options");
  if (options == nullptr) return absl::OkStatus();
  if (!request->stream) return InvalidParam("stream_options", "`stream_options` requires `stream` to be true");
  if (!options->is_object()) return InvalidParam("stream_options", "`stream_options` must be an object");
  const json* include_usage = Field(*options, "include_usage");
  if (include_usage == nullptr) return absl::OkStatus();
  if (!include_usage->is_boolean()) {
    return InvalidParam("stream_options.include_usage", "`stream_options.include_usage` must be a boolean");
  }
  request->include_usage = include_usage->get<bool>();
  return absl::OkStatus();
}

// A string, an array of token ids, or a batch of one of either.
absl::StatusOr<std::vector<int32_t>> ParsePrompt(const json& body, const Engine& engine) {
  const json* prompt = Field(body, "prompt");
  if (prompt == nullptr) return InvalidParam("prompt", "`prompt` is required");
  if (prompt->is_array() && !prompt->empty() && ((*prompt)[0].is_string() || (*prompt)[0].is_array())) {
    if (prompt->size() != 1) return InvalidParam("prompt", "only one prompt per request is supported");
    prompt = &(*prompt)[0];
  }
  if (prompt->is_string()) {
    const std::string& text = prompt->get_ref<const std::string&>();
    if (text.empty()) return InvalidParam("prompt", "`prompt` must not be empty");
    return EncodeTextPrompt(engine.tokenizer(), engine.model_config(), text);
  }
  if (!prompt->is_array()) {
    return InvalidParam("prompt", "`prompt` must be a string, an array of token ids, or a one-element array of either");
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, ToTokenIds(*prompt, "prompt"));
  if (ids.empty()) return InvalidParam("prompt", "`prompt` must not be empty");
  return ids;
}

absl::StatusOr<ChatRole> ParseRole(const json* role, const std::string& param) {
  if (role == nullptr || !role->is_string()) return InvalidParam(param, absl::StrCat("`", param, "` must be a string"));
  const std::string& name = role->get_ref<const std::string&>();
  if (name == "system") return ChatRole::kSystem;
  if (name == "user") return ChatRole::kUser;
  if (name == "assistant") return ChatRole::kAssistant;
  return InvalidParam(param, absl::StrCat("role `", name, "` is not supported: use system, user or assistant"));
}

// A string, or an array of text parts joined by newlines, as vLLM joins them.
absl::StatusOr<std::string> ParseContent(const json* content, const std::string& param) {
  const std::string wrong_type = absl::StrCat("`", param, "` must be a string or an array of text parts");
  if (content == nullptr) return InvalidParam(param, absl::StrCat("`", param, "` is required"));
  if (content->is_string()) return content->get<std::string>();
  if (!content->is_array()) return InvalidParam(param, wrong_type);
  std::vector<std::string> texts;
  for (const json& part : *content) {
    if (!part.is_object()) return InvalidParam(param, wrong_type);
    const json* type = Field(part, "type");
    const json* text = Field(part, "text");
    if (type == nullptr || *type != "text")
      return InvalidParam(param, "only content parts of type `text` are supported");
    if (text == nullptr || !text->is_string()) return InvalidParam(param, "a text part needs a string `text`");
    texts.push_back(text->get<std::string>());
  }
  return absl::StrJoin(texts, "\n");
}

absl::StatusOr<std::vector<ChatMessage>> ParseMessages(const json& body) {
  const json* messages = Field(body, "messages");
  if (messages == nullptr) return InvalidParam("messages", "`messages` is required");
  if (!messages->is_array() || messages->empty()) {
    return InvalidParam("messages", "`messages` must be a non-empty array");
  }
  std::vector<ChatMessage> parsed;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& message = (*messages)[i];
    const std::string param = absl::StrCat("messages[", i, "]");
    if (!message.is_object()) return InvalidParam(param, absl::StrCat("`", param, "` must be an object"));
    ChatMessage& out = parsed.emplace_back();
    ASSIGN_OR_RETURN(out.role, ParseRole(Field(message, "role"), param + ".role"));
    ASSIGN_OR_RETURN(out.content, ParseContent(Field(message, "content"), param + ".content"));
  }
  return parsed;
}

absl::StatusOr<std::vector<int32_t>> ParseChatPrompt(const json& body, const Engine& engine) {
  ASSIGN_OR_RETURN(const std::vector<ChatMessage> messages, ParseMessages(body));
  return EncodeChat(engine.tokenizer(), engine.model_config(), messages);
}

// Completions default to 16 tokens, as OpenAI's API; chat to the rest of the
// context, as vLLM. max_completion_tokens is chat's newer name for max_tokens.
absl::Status ReadMaxTokens(ApiKind kind, const json& body, int64_t prompt_tokens, int64_t max_context,
                           int32_t* max_tokens) {
  const char* name = "max_tokens";
  if (kind == ApiKind::kChat && Field(body, "max_completion_tokens") != nullptr) name = "max_completion_tokens";
  if (Field(body, name) != nullptr) return ReadInt32(body, name, 1, kInt32Max, max_tokens);
  if (kind == ApiKind::kCompletion) {
    *max_tokens = 16;
    return absl::OkStatus();
  }
  const int64_t room = max_context - prompt_tokens;
  if (room < 1) {
    return InvalidParam("messages", absl::StrCat("the conversation is ", prompt_tokens,
                                                 " tokens long, which leaves no room in the model's context of ",
                                                 max_context, " tokens"));
  }
  *max_tokens = static_cast<int32_t>(std::min(room, kInt32Max));
  return absl::OkStatus();
}

std::string RandomId() {
  thread_local absl::BitGen gen;
  return absl::StrCat(absl::Hex(absl::Uniform<uint64_t>(gen), absl::kZeroPad16),
                      absl::Hex(absl::Uniform<uint64_t>(gen), absl::kZeroPad16));
}

json FinishReasonJson(FinishReason reason) {
  return reason == FinishReason::kNone ? json(nullptr) : json(FinishReasonName(reason));
}

json Usage(const GenerateUpdate& update) {
  return {{"prompt_tokens", update.prompt_tokens},
          {"completion_tokens", update.completion_tokens},
          {"total_tokens", update.prompt_tokens + update.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", update.cached_prompt_tokens}}}};
}

json Envelope(const ResponseHeader& header, const char* object, json choices) {
  return {{"id", header.id},
          {"object", object},
          {"created", header.created},
          {"model", header.model},
          {"choices", std::move(choices)}};
}

// -inf is not JSON: OpenAI and vLLM send -9999 for it.
json LogprobJson(float logprob) { return std::max(logprob, -9999.0f); }

// Characters (code points) of valid UTF-8 text, as Python counts them.
int64_t CharCount(const std::string& text) {
  return std::count_if(text.begin(), text.end(), [](char c) { return (static_cast<uint8_t>(c) & 0xC0) != 0x80; });
}

// {"tokens", "token_logprobs", "top_logprobs", "text_offset"}. Each position's
// top_logprobs maps the text of the top tokens and of the sampled one to
// their logprobs, so it may have one more entry than asked for, as OpenAI's.
json CompletionLogprobs(const Tokenizer& tokenizer, absl::Span<const TokenLogprobs> logprobs, int64_t* text_offset) {
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(), offsets = json::array();
  for (const TokenLogprobs& position : logprobs) {
    const std::string text = tokenizer.Decode({position.token});
    // The sampled token first: where two tokens share a text, it keeps its own logprob.
    json top = {{text, LogprobJson(position.logprob)}};
    for (size_t i = 0; i < position.top_ids.size(); ++i) {
      top.emplace(tokenizer.Decode({position.top_ids[i]}), LogprobJson(position.top_logprobs[i]));
    }
    tokens.push_back(text);
    token_logprobs.push_back(LogprobJson(position.logprob));
    top_logprobs.push_back(std::move(top));
    offsets.push_back(*text_offset);
    *text_offset += CharCount(text);
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top_logprobs)},
          {"text_offset", std::move(offsets)}};
}

// {"token", "logprob", "bytes"}: the token's text as the tokenizer decodes it
// alone, and its raw bytes, which may be part of a character that only
// following tokens complete.
json ChatTokenLogprob(const Tokenizer& tokenizer, int32_t token, float logprob) {
  const std::string bytes = tokenizer.DecodeBytes({token});
  return {{"token", Utf8Lossy(bytes)},
          {"logprob", LogprobJson(logprob)},
          {"bytes", std::vector<uint8_t>(bytes.begin(), bytes.end())}};
}

// {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}.
json ChatLogprobs(const Tokenizer& tokenizer, absl::Span<const TokenLogprobs> logprobs) {
  json content = json::array();
  for (const TokenLogprobs& position : logprobs) {
    json entry = ChatTokenLogprob(tokenizer, position.token, position.logprob);
    entry["top_logprobs"] = json::array();
    for (size_t i = 0; i < position.top_ids.size(); ++i) {
      entry["top_logprobs"].push_back(ChatTokenLogprob(tokenizer, position.top_ids[i], position.top_logprobs[i]));
    }
    content.push_back(std::move(entry));
  }
  return {{"content", std::move(content)}};
}

json ChunkEnvelope(const ResponseHeader& header, json choices, bool include_usage) {
  json chunk = Envelope(header, header.kind == ApiKind::kCompletion ? "text_completion" : "chat.completion.chunk",
                        std::move(choices));
  if (include_usage) chunk["usage"] = nullptr;
  return chunk;
}

const char* ErrorType(int http_status) {
  switch (http_status) {
    case 404:
      return "not_found_error";
    case 429:
      return "rate_limit_exceeded";
    case 503:
      return "service_unavailable_error";
    default:
      return http_status >= 500 ? "server_error" : "invalid_request_error";
  }
}

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
      return 400;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    default:
      return 500;
  }
}

json PayloadOrNull(const absl::Status& status, const char* type_url) {
  const absl::optional<absl::Cord> payload = status.GetPayload(type_url);
  return payload.has_value() ? json(std::string(*payload)) : json(nullptr);
}

json ErrorBody(absl::string_view message, int http_status, json param, json code) {
  return {{"error",
           {{"message", std::string(message)},
            {"type", ErrorType(http_status)},
            {"param", std::move(param)},
            {"code", std::move(code)}}}};
}

// Whether arrays and objects in `text` nest deeper than `limit`, counting
// brackets outside strings. nlohmann's parser recurses without a bound, and a
// body of a few MB of '[' costs hundreds of MB to parse and to free.
bool NestsDeeperThan(absl::string_view text, int limit) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

}  // namespace

absl::StatusOr<json> ParseBody(const std::string& body) {
  if (NestsDeeperThan(body, kMaxJsonDepth)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request body nests arrays and objects deeper than ", kMaxJsonDepth, " levels"));
  }
  json value = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return absl::InvalidArgumentError("the request body is not valid JSON");
  if (!value.is_object()) return absl::InvalidArgumentError("the request body must be a JSON object");
  return value;
}

absl::StatusOr<ApiRequest> ParseGenerateRequest(ApiKind kind, const json& body, const Engine& engine) {
  RETURN_IF_ERROR(CheckModel(body, engine));
  RETURN_IF_ERROR(RejectUnsupported(kind, body));
  ApiRequest request;
  request.input.sampling.temperature = 1.0f;  // OpenAI's default: sampling, not greedy
  RETURN_IF_ERROR(ReadStreaming(body, &request));
  RETURN_IF_ERROR(ReadSampling(body, &request.input.sampling));
  RETURN_IF_ERROR(ReadLogprobs(kind, body, &request.input.sampling.logprobs));
  // Tokenizing is the costly step, so it comes after every cheap check.
  ASSIGN_OR_RETURN(request.input.prompt_ids,
                   kind == ApiKind::kCompletion ? ParsePrompt(body, engine) : ParseChatPrompt(body, engine));
  RETURN_IF_ERROR(ReadMaxTokens(kind, body, request.input.prompt_ids.size(), engine.max_context(),
                                &request.input.sampling.max_tokens));
  return request;
}

absl::StatusOr<std::vector<int32_t>> ParseTokenizeRequest(const json& body, const Engine& engine) {
  RETURN_IF_ERROR(CheckModel(body, engine));
  if (Field(body, "messages") != nullptr) return ParseChatPrompt(body, engine);
  return ParsePrompt(body, engine);
}

ResponseHeader NewResponseHeader(ApiKind kind, const std::string& model) {
  ResponseHeader header;
  header.kind = kind;
  header.id = absl::StrCat(kind == ApiKind::kCompletion ? "cmpl-" : "chatcmpl-", RandomId());
  header.created = absl::ToUnixSeconds(absl::Now());
  header.model = model;
  return header;
}

json BuildLogprobs(ApiKind kind, const Tokenizer& tokenizer, absl::Span<const TokenLogprobs> logprobs,
                   int64_t* text_offset) {
  return kind == ApiKind::kCompletion ? CompletionLogprobs(tokenizer, logprobs, text_offset)
                                      : ChatLogprobs(tokenizer, logprobs);
}

json BuildResponse(const ResponseHeader& header, const std::string& text, const GenerateUpdate& final_update,
                   json logprobs) {
  json choice = {{"index", 0},
                 {"logprobs", std::move(logprobs)},
                 {"finish_reason", FinishReasonJson(final_update.finish_reason)}};
  if (header.kind == ApiKind::kCompletion) {
    choice["text"] = text;
  } else {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  }
  json response = Envelope(header, header.kind == ApiKind::kCompletion ? "text_completion" : "chat.completion",
                           json::array({std::move(choice)}));
  response["usage"] = Usage(final_update);
  return response;
}

json BuildChunk(const ResponseHeader& header, const GenerateUpdate& update, bool include_usage, json logprobs) {
  json choice = {
      {"index", 0}, {"logprobs", std::move(logprobs)}, {"finish_reason", FinishReasonJson(update.finish_reason)}};
  if (header.kind == ApiKind::kCompletion) {
    choice["text"] = update.text;
  } else {
    // OpenAI's closing chunk has an empty delta.
    choice["delta"] = update.text.empty() && update.finished() ? json::object() : json{{"content", update.text}};
  }
  return ChunkEnvelope(header, json::array({std::move(choice)}), include_usage);
}

json BuildRoleChunk(const ResponseHeader& header, bool include_usage) {
  json choice = {{"index", 0},
                 {"delta", {{"role", "assistant"}, {"content", ""}}},
                 {"logprobs", nullptr},
                 {"finish_reason", nullptr}};
  return ChunkEnvelope(header, json::array({std::move(choice)}), include_usage);
}

json BuildUsageChunk(const ResponseHeader& header, const GenerateUpdate& final_update) {
  json chunk = ChunkEnvelope(header, json::array(), /*include_usage=*/false);
  chunk["usage"] = Usage(final_update);
  return chunk;
}

json BuildTokenizeResponse(const std::vector<int32_t>& ids, int64_t max_model_len) {
  return {{"tokens", ids}, {"count", ids.size()}, {"max_model_len", max_model_len}};
}

json BuildModelsResponse(const std::string& model, int64_t max_model_len,
                         const std::vector<GroupKvCapacity>& kv_capacity) {
  json groups = json::array();
  int64_t tokens = 0;
  for (const GroupKvCapacity& group : kv_capacity) {
    groups.push_back({{"group", group.group_id},
                      {"replicas", group.replicas},
                      {"tokens_per_replica", group.tokens_per_replica},
                      {"tokens", group.tokens()}});
    tokens += group.tokens();
  }
  json entry = {{"id", model},
                {"object", "model"},
                {"created", absl::ToUnixSeconds(absl::Now())},
                {"owned_by", "mlaserve"},
                {"root", model},
                {"max_model_len", max_model_len},
                {"kv_cache",
                 {{"tokens", tokens},
                  {"max_concurrency", static_cast<double>(tokens) / static_cast<double>(max_model_len)},
                  {"groups", std::move(groups)}}}};
  return {{"object", "list"}, {"data", json::array({std::move(entry)})}};
}

absl::Status FinalStatus(const GenerateUpdate& final_update) {
  switch (final_update.finish_reason) {
    case FinishReason::kStop:
    case FinishReason::kLength:
      return absl::OkStatus();
    case FinishReason::kAbort:
      return absl::UnavailableError("the request was aborted by the server");
    case FinishReason::kError:
      return final_update.error.ok() ? absl::InternalError("the engine failed the request") : final_update.error;
    case FinishReason::kNone:
      break;
  }
  return absl::InternalError("the request ended without a finish reason");
}

ApiError ToApiError(const absl::Status& status) {
  ApiError error;
  error.http_status = HttpStatusOf(status.code());
  error.body = ErrorBody(status.message(), error.http_status, PayloadOrNull(status, kParamPayload),
                         PayloadOrNull(status, kCodePayload));
  return error;
}

ApiError HttpError(int http_status, absl::string_view message) {
  return ApiError{http_status, ErrorBody(message, http_status, nullptr, nullptr)};
}

std::string Serialize(const json& value) {
  return value.dump(/*indent=*/-1, /*indent_char=*/' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

}  // namespace mlaserve
