// The serving benchmark, after vLLM's benchmark_serving.py and SGLang's
// bench_serving: sends a generated workload to an OpenAI-compatible server,
// open loop (Poisson arrivals) or closed loop (fixed concurrency), and reports
// throughput, latency percentiles and the prefix-cache hit rate.
//
//   bench --url=http://127.0.0.1:8000 --workload=shared_prefix --prefix_len=2048
//         --input_len=128 --output_len=256 --num_requests=200 --request_rate=8
#include <cmath>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tests/bench/load_driver.h"
#include "tests/bench/stats.h"
#include "tests/bench/workload.h"

ABSL_FLAG(std::string, url, "http://127.0.0.1:8000", "the server, scheme://host:port");
ABSL_FLAG(std::string, model, "", "model to request (default: the first that /v1/models lists)");
ABSL_FLAG(std::string, workload, "random", "random | shared_prefix | multi_turn");
ABSL_FLAG(int64_t, num_requests, 100, "requests to send (random and shared_prefix)");
ABSL_FLAG(double, request_rate, std::numeric_limits<double>::infinity(),
          "open loop: requests per second with Poisson arrivals (conversation starts for multi_turn); "
          "inf sends them all at once");
ABSL_FLAG(int64_t, concurrency, 0,
          "closed loop: requests in flight, a new one as soon as one ends; 0 uses --request_rate");
ABSL_FLAG(int64_t, input_len, 1024, "prompt tokens (shared_prefix: after the prefix; multi_turn: new per turn)");
ABSL_FLAG(int64_t, output_len, 128, "output tokens per request (EOS is ignored)");
ABSL_FLAG(double, range_ratio, 0, "lengths are uniform in [len * (1 - r), len * (1 + r)]");
ABSL_FLAG(int64_t, prefix_len, 1024, "shared_prefix: tokens of the shared system prompt");
ABSL_FLAG(int64_t, num_prefixes, 1, "shared_prefix: distinct shared prefixes to draw from");
ABSL_FLAG(int64_t, num_turns, 4, "multi_turn: turns per conversation");
ABSL_FLAG(int64_t, num_conversations, 16, "multi_turn: conversations");
ABSL_FLAG(int32_t, vocab_low, 10, "smallest prompt token id");
ABSL_FLAG(int32_t, vocab_high, 0,
          "one past the largest prompt token id (0: the vocab_size /v1/models reports, else 1000)");
ABSL_FLAG(uint64_t, seed, 0, "seed of the prompts, lengths and arrival times");
ABSL_FLAG(std::string, json_out, "", "also write the results and this configuration to this JSON file");
ABSL_FLAG(double, timeout_s, 600, "per-request timeout in seconds");
ABSL_FLAG(int64_t, warmup, 1, "requests sent one at a time before the run, not counted");

namespace mlaserve::bench {
namespace {

constexpr int32_t kFallbackVocabHigh = 1000;

absl::StatusOr<WorkloadOptions> WorkloadFromFlags(const ModelInfo& model) {
  ASSIGN_OR_RETURN(WorkloadKind kind, ParseWorkloadKind(absl::GetFlag(FLAGS_workload)));
  int32_t vocab_high = absl::GetFlag(FLAGS_vocab_high);
  if (vocab_high == 0) vocab_high = model.vocab_size > 0 ? static_cast<int32_t>(model.vocab_size) : kFallbackVocabHigh;
  return WorkloadOptions{.kind = kind,
                         .num_requests = absl::GetFlag(FLAGS_num_requests),
                         .input_len = absl::GetFlag(FLAGS_input_len),
                         .output_len = absl::GetFlag(FLAGS_output_len),
                         .range_ratio = absl::GetFlag(FLAGS_range_ratio),
                         .prefix_len = absl::GetFlag(FLAGS_prefix_len),
                         .num_prefixes = absl::GetFlag(FLAGS_num_prefixes),
                         .num_turns = absl::GetFlag(FLAGS_num_turns),
                         .num_conversations = absl::GetFlag(FLAGS_num_conversations),
                         .vocab_low = absl::GetFlag(FLAGS_vocab_low),
                         .vocab_high = vocab_high,
                         .seed = absl::GetFlag(FLAGS_seed)};
}

LoadOptions LoadFromFlags(const std::string& url, const std::string& model) {
  return LoadOptions{.url = url,
                     .model = model,
                     .request_rate = absl::GetFlag(FLAGS_request_rate),
                     .concurrency = absl::GetFlag(FLAGS_concurrency),
                     .timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_s)),
                     .seed = absl::GetFlag(FLAGS_seed)};
}

// Random prompts of the run's lengths, sent one at a time so the server's
// first-request costs stay out of the numbers. They come from another seed,
// so they do not warm the prefix cache for the measured prompts.
absl::Status Warmup(WorkloadOptions workload, const LoadOptions& load, int64_t max_model_len) {
  const int64_t count = absl::GetFlag(FLAGS_warmup);
  if (count <= 0) return absl::OkStatus();
  workload.kind = WorkloadKind::kRandom;
  workload.num_requests = count;
  workload.seed += 1;
  ASSIGN_OR_RETURN(std::vector<Session> sessions, GenerateWorkload(workload));
  RETURN_IF_ERROR(CheckFitsContext(sessions, max_model_len));
  LoadOptions sequential = load;
  sequential.concurrency = 1;
  std::cerr << "bench: " << count << " warmup requests\n";
  ASSIGN_OR_RETURN(LoadResult result, RunLoad(sessions, sequential));
  for (const RequestResult& r : result.requests) {
    if (!r.success) return absl::UnavailableError(absl::StrCat("a warmup request failed: ", r.error));
  }
  return absl::OkStatus();
}

// Prints progress to stderr at most once a second, and at the end.
std::function<void(int64_t, int64_t)> ProgressPrinter() {
  auto last_print = std::make_shared<absl::Time>(absl::InfinitePast());
  return [last_print](int64_t done, int64_t total) {
    const absl::Time now = absl::Now();
    if (done < total && now - *last_print < absl::Seconds(1)) return;
    *last_print = now;
    std::cerr << "bench: " << done << "/" << total << " requests done\n";
  };
}

nlohmann::json ConfigJson(const ModelInfo& model, const WorkloadOptions& workload, const LoadOptions& load) {
  const double rate = load.request_rate;
  return {{"url", load.url},
          {"model", model.id},
          {"max_model_len", model.max_model_len},
          {"workload", absl::GetFlag(FLAGS_workload)},
          {"num_requests", workload.num_requests},
          {"request_rate", std::isfinite(rate) ? nlohmann::json(rate) : nlohmann::json("inf")},
          {"concurrency", load.concurrency},
          {"input_len", workload.input_len},
          {"output_len", workload.output_len},
          {"range_ratio", workload.range_ratio},
          {"prefix_len", workload.prefix_len},
          {"num_prefixes", workload.num_prefixes},
          {"num_turns", workload.num_turns},
          {"num_conversations", workload.num_conversations},
          {"vocab_low", workload.vocab_low},
          {"vocab_high", workload.vocab_high},
          {"seed", workload.seed},
          {"timeout_s", absl::ToDoubleSeconds(load.timeout)},
          {"warmup", absl::GetFlag(FLAGS_warmup)}};
}

absl::Status WriteJson(const std::string& path, const nlohmann::json& json) {
  std::ofstream out(path);
  out << json.dump(2) << "\n";
  out.close();
  if (!out) return absl::InternalError("cannot write " + path);
  return absl::OkStatus();
}

absl::Status Run() {
  std::string url = absl::GetFlag(FLAGS_url);
  url.erase(url.find_last_not_of('/') + 1);  // httplib takes no path, not even "/"
  ASSIGN_OR_RETURN(ModelInfo model, FetchModelInfo(url, absl::GetFlag(FLAGS_model)));
  ASSIGN_OR_RETURN(WorkloadOptions workload, WorkloadFromFlags(model));
  ASSIGN_OR_RETURN(std::vector<Session> sessions, GenerateWorkload(workload));
  RETURN_IF_ERROR(CheckFitsContext(sessions, model.max_model_len));
  LoadOptions load = LoadFromFlags(url, model.id);
  RETURN_IF_ERROR(Warmup(workload, load, model.max_model_len));

  std::cerr << "bench: " << CountRequests(sessions) << " requests to " << model.id << " at " << url << "\n";
  load.on_request_done = ProgressPrinter();
  ASSIGN_OR_RETURN(LoadResult result, RunLoad(sessions, load));
  const BenchmarkSummary summary = Summarize(result.requests, result.duration_s);
  std::cout << FormatTable(summary);
  if (const std::string path = absl::GetFlag(FLAGS_json_out); !path.empty()) {
    nlohmann::json json = ToJson(summary);
    json["config"] = ConfigJson(model, workload, load);
    RETURN_IF_ERROR(WriteJson(path, json));
  }
  if (summary.failed > 0) {
    return absl::UnavailableError(absl::StrCat(summary.failed, " of ", result.requests.size(),
                                               " requests failed; the first errors:\n  ",
                                               absl::StrJoin(summary.first_errors, "\n  ")));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace mlaserve::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("serving benchmark for an OpenAI-compatible server; see --helpfull");
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = mlaserve::bench::Run();
  if (!status.ok()) {
    std::cerr << "bench: " << status.message() << "\n";
    return 1;
  }
  return 0;
}
