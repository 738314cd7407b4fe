#include "tests/bench/workload.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mlaserve::bench {
namespace {

// Every random draw of one workload, from one seeded engine, so a seed fixes it.
class RandomSource {
 public:
  explicit RandomSource(const WorkloadOptions& options)
      : engine_(options.seed), token_(options.vocab_low, options.vocab_high - 1), range_ratio_(options.range_ratio) {}

  std::vector<int32_t> Tokens(int64_t count) {
    std::vector<int32_t> tokens(count);
    for (int32_t& t : tokens) t = token_(engine_);
    return tokens;
  }

  // A length around `len`, never below one token.
  int64_t Length(int64_t len) {
    const int64_t low = std::max<int64_t>(1, static_cast<int64_t>(len * (1 - range_ratio_)));
    const int64_t high = std::max<int64_t>(low, static_cast<int64_t>(len * (1 + range_ratio_)));
    return std::uniform_int_distribution<int64_t>(low, high)(engine_);
  }

  size_t Index(size_t size) { return std::uniform_int_distribution<size_t>(0, size - 1)(engine_); }

 private:
  std::mt19937_64 engine_;
  std::uniform_int_distribution<int32_t> token_;
  double range_ratio_;
};

absl::Status RequirePositive(int64_t value, absl::string_view flag) {
  if (value >= 1) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " must be at least 1, not ", value));
}

absl::Status Validate(const WorkloadOptions& o) {
  RETURN_IF_ERROR(RequirePositive(o.input_len, "input_len"));
  RETURN_IF_ERROR(RequirePositive(o.output_len, "output_len"));
  if (!(o.range_ratio >= 0 && o.range_ratio < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("--range_ratio must be in [0, 1), not ", o.range_ratio));
  }
  if (o.vocab_low < 0 || o.vocab_low >= o.vocab_high) {
    return absl::InvalidArgumentError(
        absl::StrCat("the token id range [", o.vocab_low, ", ", o.vocab_high, ") is empty or negative"));
  }
  switch (o.kind) {
    case WorkloadKind::kRandom:
      return RequirePositive(o.num_requests, "num_requests");
    case WorkloadKind::kSharedPrefix:
      RETURN_IF_ERROR(RequirePositive(o.num_requests, "num_requests"));
      RETURN_IF_ERROR(RequirePositive(o.prefix_len, "prefix_len"));
      return RequirePositive(o.num_prefixes, "num_prefixes");
    case WorkloadKind::kMultiTurn:
      RETURN_IF_ERROR(RequirePositive(o.num_turns, "num_turns"));
      return RequirePositive(o.num_conversations, "num_conversations");
  }
  return absl::InvalidArgumentError("unknown workload kind");
}

std::vector<Session> RandomSessions(const WorkloadOptions& o, RandomSource& random) {
  std::vector<Session> sessions;
  for (int64_t i = 0; i < o.num_requests; ++i) {
    std::vector<int32_t> prompt = random.Tokens(random.Length(o.input_len));
    sessions.push_back({{{std::move(prompt), random.Length(o.output_len)}}});
  }
  return sessions;
}

std::vector<Session> SharedPrefixSessions(const WorkloadOptions& o, RandomSource& random) {
  std::vector<std::vector<int32_t>> prefixes;
  for (int64_t i = 0; i < o.num_prefixes; ++i) prefixes.push_back(random.Tokens(o.prefix_len));
  std::vector<Session> sessions;
  for (int64_t i = 0; i < o.num_requests; ++i) {
    std::vector<int32_t> prompt = prefixes[random.Index(prefixes.size())];
    const std::vector<int32_t> question = random.Tokens(random.Length(o.input_len));
    prompt.insert(prompt.end(), question.begin(), question.end());
    sessions.push_back({{{std::move(prompt), random.Length(o.output_len)}}});
  }
  return sessions;
}

Session Conversation(const WorkloadOptions& o, RandomSource& random) {
  Session conversation;
  std::vector<int32_t> prompt;
  for (int64_t turn = 0; turn < o.num_turns; ++turn) {
    if (turn > 0) {
      const std::vector<int32_t> answer = random.Tokens(conversation.turns.back().max_tokens);
      prompt.insert(prompt.end(), answer.begin(), answer.end());
    }
    const std::vector<int32_t> question = random.Tokens(random.Length(o.input_len));
    prompt.insert(prompt.end(), question.begin(), question.end());
    conversation.turns.push_back({prompt, random.Length(o.output_len)});
  }
  return conversation;
}

}  // namespace

absl::StatusOr<WorkloadKind> ParseWorkloadKind(absl::string_view name) {
  if (name == "random") return WorkloadKind::kRandom;
  if (name == "shared_prefix") return WorkloadKind::kSharedPrefix;
  if (name == "multi_turn") return WorkloadKind::kMultiTurn;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown workload '", name, "'; expected random, shared_prefix or multi_turn"));
}

absl::StatusOr<std::vector<Session>> GenerateWorkload(const WorkloadOptions& options) {
  RETURN_IF_ERROR(Validate(options));
  RandomSource random(options);
  switch (options.kind) {
    case WorkloadKind::kRandom:
      return RandomSessions(options, random);
    case WorkloadKind::kSharedPrefix:
      return SharedPrefixSessions(options, random);
    case WorkloadKind::kMultiTurn: {
      std::vector<Session> conversations;
      for (int64_t i = 0; i < options.num_conversations; ++i) conversations.push_back(Conversation(options, random));
      return conversations;
    }
  }
  return absl::InvalidArgumentError("unknown workload kind");
}

absl::Status CheckFitsContext(const std::vector<Session>& sessions, int64_t max_model_len) {
  if (max_model_len <= 0) return absl::OkStatus();
  for (const Session& session : sessions) {
    for (const BenchRequest& r : session.turns) {
      const int64_t needed = static_cast<int64_t>(r.prompt.size()) + r.max_tokens;
      if (needed <= max_model_len) continue;
      return absl::InvalidArgumentError(absl::StrCat("a request needs ", r.prompt.size(), " prompt + ", r.max_tokens,
                                                     " output tokens, over the model's max_model_len of ",
                                                     max_model_len, "; shorten the lengths"));
    }
  }
  return absl::OkStatus();
}

int64_t CountRequests(const std::vector<Session>& sessions) {
  int64_t count = 0;
  for (const Session& session : sessions) count += static_cast<int64_t>(session.turns.size());
  return count;
}

}  // namespace mlaserve::bench
