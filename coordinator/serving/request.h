// What a front end (HTTP or gRPC) hands the serving engine and gets back.
// Prompts arrive tokenized; the engine validates them, schedules them, and
// reports progress through the request's callback: text deltas already
// detokenized and cut at stop strings, and a final update with the finish
// reason and usage. Requests may ask for the logprobs of their tokens.
#ifndef MLASERVE_COORDINATOR_SERVING_REQUEST_H_
#define MLASERVE_COORDINATOR_SERVING_REQUEST_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace mlaserve {

// The most alternatives a request may ask logprobs for, as OpenAI and vLLM.
constexpr int32_t kMaxLogprobs = 20;

struct SamplingOptions {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;         // 0: no limit
  float top_p = 1.0f;        // 1: no limit
  std::optional<uint64_t> seed;
  int32_t max_tokens = 16;
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop;  // stop strings, not included in the output
  bool ignore_eos = false;
  int32_t logprobs = -1;  // -1: none; else the top-N alternatives to report, N in [0, kMaxLogprobs]
};

struct GenerateInput {
  std::vector<int32_t> prompt_ids;
  SamplingOptions sampling;
};

enum class FinishReason { kNone, kStop, kLength, kAbort, kError };
const char* FinishReasonName(FinishReason reason);  // "stop", "length", "abort", "error"

// Log-probabilities (log_softmax of the raw logits, before temperature,
// top-k and top-p) of a sampled token and of the most likely tokens at its
// position, most likely first (ties: lower id first).
struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
};

// One update of a request. Deltas concatenate to the whole output.
struct GenerateUpdate {
  std::vector<int32_t> token_ids;
  std::vector<TokenLogprobs> logprobs;  // parallel to token_ids when the request asked for them
  std::string text;
  FinishReason finish_reason = FinishReason::kNone;  // kNone while running
  absl::Status error;                                 // set with kError
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_prompt_tokens = 0;
  bool finished() const { return finish_reason != FinishReason::kNone; }
};

// Called on an engine thread, in order, exactly once with finished() true last.
using UpdateCallback = std::function<void(const GenerateUpdate&)>;

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_REQUEST_H_
