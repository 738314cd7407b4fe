// The OpenAI-compatible API's wire format, as vLLM and SGLang serve it: the
// bodies of /v1/completions, /v1/chat/completions and /tokenize validated
// into the engine's GenerateInput; the JSON of responses, streamed chunks
// (with the logprobs of their tokens when asked for) and model listings; and
// OpenAI's error body,
// {"error": {"message", "type", "param", "code"}}, for every failure.
#ifndef MLASERVE_COORDINATOR_API_OPENAI_PROTOCOL_H_
#define MLASERVE_COORDINATOR_API_OPENAI_PROTOCOL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "coordinator/serving/engine.h"
#include "coordinator/serving/request.h"
#include "nlohmann/json.hpp"

namespace mlaserve {

enum class ApiKind { kCompletion, kChat };

// A validated generation request.
struct ApiRequest {
  GenerateInput input;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: end with a usage chunk
};

// Request parsing. Errors are InvalidArgument (400), carrying the offending
// field as OpenAI's `param`, or NotFound (404) for a model not served here.
// The deepest nesting of arrays and objects a request body may have (an
// OpenAI request needs 4 or 5: messages, content parts, tools' schemas).
inline constexpr int kMaxJsonDepth = 64;
// A JSON object; InvalidArgument for invalid JSON, another value, or nesting
// deeper than kMaxJsonDepth (refused before parsing).
absl::StatusOr<nlohmann::json> ParseBody(const std::string& body);
absl::StatusOr<ApiRequest> ParseGenerateRequest(ApiKind kind, const nlohmann::json& body, const Engine& engine);
// {"prompt": ...} as /v1/completions takes it, or {"messages": [...]} as chat does.
absl::StatusOr<std::vector<int32_t>> ParseTokenizeRequest(const nlohmann::json& body, const Engine& engine);

// What every response and chunk of one request repeats.
struct ResponseHeader {
  ApiKind kind = ApiKind::kCompletion;
  std::string id;       // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
};
ResponseHeader NewResponseHeader(ApiKind kind, const std::string& model);

// A choice's "logprobs" for the tokens of a response or chunk, each token's
// text decoded alone (invalid UTF-8 replaced by U+FFFD, as vLLM does).
// Completions: {"tokens", "token_logprobs", "top_logprobs", "text_offset"},
// offsets counted from *text_offset (the characters of the choice's earlier
// tokens), which advances past these. Chat: {"content": [{"token", "logprob",
// "bytes", "top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...]}.
nlohmann::json BuildLogprobs(ApiKind kind, const Tokenizer& tokenizer, absl::Span<const TokenLogprobs> logprobs,
                             int64_t* text_offset);
// A whole response: `text` is the request's output, `final_update` its last
// update, `logprobs` the choice's (BuildLogprobs; null when not asked for).
nlohmann::json BuildResponse(const ResponseHeader& header, const std::string& text, const GenerateUpdate& final_update,
                             nlohmann::json logprobs = nullptr);
// A streamed update: its text delta, its tokens' logprobs (as BuildResponse),
// and its finish reason if it is the last. With include_usage every chunk has
// "usage": null, as OpenAI's do.
nlohmann::json BuildChunk(const ResponseHeader& header, const GenerateUpdate& update, bool include_usage,
                          nlohmann::json logprobs = nullptr);
// Chat streams open with the assistant's role and empty content.
nlohmann::json BuildRoleChunk(const ResponseHeader& header, bool include_usage);
// stream_options.include_usage's closing chunk: no choices, the usage.
nlohmann::json BuildUsageChunk(const ResponseHeader& header, const GenerateUpdate& final_update);
nlohmann::json BuildTokenizeResponse(const std::vector<int32_t>& ids, int64_t max_model_len);
// The model's entry also says how many tokens fit in the KV cache, per group
// and in all, and how many requests of max_model_len tokens that is (as
// vLLM's startup log does: "GPU KV cache size", "Maximum concurrency").
nlohmann::json BuildModelsResponse(const std::string& model, int64_t max_model_len,
                                   const std::vector<GroupKvCapacity>& kv_capacity);

// How a request that ended with `final_update` went: OK for "stop" and
// "length", the engine's error, or Unavailable for an abort the client did
// not ask for (clients never see "abort").
absl::Status FinalStatus(const GenerateUpdate& final_update);

struct ApiError {
  int http_status = 500;
  nlohmann::json body;
};
// InvalidArgument 400, NotFound 404, ResourceExhausted 429, Unavailable 503, others 500.
ApiError ToApiError(const absl::Status& status);
// Errors the HTTP layer finds itself: unknown routes, oversized bodies, ...
ApiError HttpError(int http_status, absl::string_view message);

// Compact JSON text. Invalid UTF-8 becomes U+FFFD rather than an exception.
std::string Serialize(const nlohmann::json& value);

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_API_OPENAI_PROTOCOL_H_
