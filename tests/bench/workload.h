// The requests a serving benchmark sends, generated up front from a seed so a
// run is reproducible. Prompts are token-id arrays, so their lengths are exact
// whatever the tokenizer; outputs are exact too, as requests set ignore_eos.
#ifndef MLASERVE_TESTS_BENCH_WORKLOAD_H_
#define MLASERVE_TESTS_BENCH_WORKLOAD_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mlaserve::bench {

struct BenchRequest {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 0;
};

// Requests that run one after another: a multi-turn conversation's turns, or
// a single request. The load driver runs sessions concurrently.
struct Session {
  std::vector<BenchRequest> turns;
};

enum class WorkloadKind {
  kRandom,        // independent random prompts
  kSharedPrefix,  // one of `num_prefixes` shared "system prompts", then a random question
  kMultiTurn,     // conversations whose every turn extends the previous turn's prompt
};
absl::StatusOr<WorkloadKind> ParseWorkloadKind(absl::string_view name);

struct WorkloadOptions {
  WorkloadKind kind = WorkloadKind::kRandom;
  int64_t num_requests = 0;  // random and shared_prefix
  // Lengths are drawn uniformly from [len * (1 - range_ratio), len * (1 + range_ratio)].
  int64_t input_len = 0;  // new tokens per request (per turn for multi_turn)
  int64_t output_len = 0;
  double range_ratio = 0;
  int64_t prefix_len = 0;  // shared_prefix: tokens of each shared prefix
  int64_t num_prefixes = 1;
  int64_t num_turns = 0;  // multi_turn
  int64_t num_conversations = 0;
  // Prompt tokens are drawn uniformly from [vocab_low, vocab_high).
  int32_t vocab_low = 0;
  int32_t vocab_high = 0;
  uint64_t seed = 0;
};

// Multi-turn conversations are planned whole: turn k's prompt is turn k-1's
// prompt, then turn k-1's max_tokens of random "assistant" tokens standing in
// for its output (exact, as outputs ignore EOS), then new "user" tokens.
absl::StatusOr<std::vector<Session>> GenerateWorkload(const WorkloadOptions& options);

// InvalidArgument if some request's prompt and output exceed the model's
// context, which the server would reject; `max_model_len` <= 0 means unknown.
absl::Status CheckFitsContext(const std::vector<Session>& sessions, int64_t max_model_len);

int64_t CountRequests(const std::vector<Session>& sessions);

}  // namespace mlaserve::bench

#endif  // MLASERVE_TESTS_BENCH_WORKLOAD_H_
