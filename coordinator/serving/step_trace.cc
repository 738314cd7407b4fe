#include "coordinator/serving/step_trace.h"

#include <algorithm>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace mlaserve {
namespace {

constexpr char kHeader[] =
    "group,workers,sequences,tokens,prefill_tokens,max_replica_tokens,max_replica_attended,seconds";

}  // namespace

void StepShape::AddReplica(const std::vector<ScheduledSequence>& scheduled) {
  int64_t tokens_here = 0, attended = 0, decode = 0, prompt = 0;
  for (const ScheduledSequence& s : scheduled) {
    tokens_here += s.num_tokens;
    if (s.num_tokens > 1) prefill_tokens += s.num_tokens;
    // Token begin + i attends to the begin + i + 1 positions up to itself.
    const int64_t pairs = s.num_tokens * s.begin + s.num_tokens * (s.num_tokens + 1) / 2;
    attended += pairs;
    (s.num_tokens > 1 ? prompt : decode) += pairs;
  }
  max_replica_decode_attended = std::max(max_replica_decode_attended, decode);
  max_replica_prompt_attended = std::max(max_replica_prompt_attended, prompt);
  sequences += static_cast<int64_t>(scheduled.size());
  tokens += tokens_here;
  max_replica_tokens = std::max(max_replica_tokens, tokens_here);
  max_replica_attended = std::max(max_replica_attended, attended);
}

absl::StatusOr<std::unique_ptr<StepTrace>> StepTrace::Create(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "w");
  if (file == nullptr) return absl::NotFoundError(absl::StrCat("cannot write the step trace ", path));
  std::fprintf(file, "%s\n", kHeader);
  return std::unique_ptr<StepTrace>(new StepTrace(file));
}

StepTrace::~StepTrace() { std::fclose(file_); }

void StepTrace::Record(const StepSample& s) {
  absl::MutexLock lock(&mu_);
  absl::FPrintF(file_, "%d,%d,%d,%d,%d,%d,%d,%.9f\n", s.group, s.workers, s.shape.sequences, s.shape.tokens,
                s.shape.prefill_tokens, s.shape.max_replica_tokens, s.shape.max_replica_attended, s.seconds);
  std::fflush(file_);
}

absl::StatusOr<std::vector<StepSample>> ReadStepTrace(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("no step trace ", path));
  std::vector<StepSample> samples;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (number == 1 && line == kHeader) continue;
    if (line.empty()) continue;
    const std::vector<absl::string_view> f = absl::StrSplit(line, ',');
    StepSample s;
    int64_t group = 0, workers = 0;
    if (f.size() != 8 || !absl::SimpleAtoi(f[0], &group) || !absl::SimpleAtoi(f[1], &workers) ||
        !absl::SimpleAtoi(f[2], &s.shape.sequences) || !absl::SimpleAtoi(f[3], &s.shape.tokens) ||
        !absl::SimpleAtoi(f[4], &s.shape.prefill_tokens) || !absl::SimpleAtoi(f[5], &s.shape.max_replica_tokens) ||
        !absl::SimpleAtoi(f[6], &s.shape.max_replica_attended) || !absl::SimpleAtod(f[7], &s.seconds) ||
        s.seconds < 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", number, ": not a step sample: ", line));
    }
    s.group = static_cast<int32_t>(group);
    s.workers = static_cast<int>(workers);
    samples.push_back(s);
  }
  return samples;
}

}  // namespace mlaserve
