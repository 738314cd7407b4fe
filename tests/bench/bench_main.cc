// The serving benchmark, after vLLM's benchmark_serving.py and SGLang's
// bench_serving: sends a generated workload to an OpenAI-compatible server,
// open loop (Poisson arrivals) or closed loop (fixed concurrency), and reports
// throughput, latency percentiles and the prefix-cache hit rate. Tokens are
// counted from the server's usage, not from text, so random-weights models
// whose tokens detokenize to nothing measure as any other. --sweep runs the
// workload closed loop at several concurrency levels and charts them.
//
//   bench --url=http://127.0.0.1:8000 --workload=shared_prefix --prefix_len=2048
//         --input_len=128 --output_len=256 --num_requests=200 --request_rate=8
//   bench --url=http://127.0.0.1:8000 --num_requests=512 --sweep=1,16,64,256
//         --json_out=/tmp/sweep.json --plot_out=/tmp/sweep.png
#include <cmath>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
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
ABSL_FLAG(int64_t, output_len, 128, "output tokens per request (exact unless --noignore_eos)");
ABSL_FLAG(double, range_ratio, 0, "lengths are uniform in [len * (1 - r), len * (1 + r)]");
ABSL_FLAG(int64_t, prefix_len, 1024, "shared_prefix: tokens of the shared system prompt");
ABSL_FLAG(int64_t, num_prefixes, 1, "shared_prefix: distinct shared prefixes to draw from");
ABSL_FLAG(int64_t, num_turns, 4, "multi_turn: turns per conversation");
ABSL_FLAG(int64_t, num_conversations, 16, "multi_turn: conversations");
ABSL_FLAG(int32_t, vocab_low, 10, "smallest prompt token id");
ABSL_FLAG(int32_t, vocab_high, 0,
          "one past the largest prompt token id (0: the vocab_size /v1/models reports, else 1000)");
ABSL_FLAG(uint64_t, seed, 0, "seed of the prompts, lengths and arrival times");
ABSL_FLAG(bool, ignore_eos, true,
          "send \"ignore_eos\": true so outputs run to their max_tokens; --noignore_eos lets them stop at EOS");
ABSL_FLAG(int32_t, logprobs, -1,
          "ask for this many logprobs (0: the sampled token's only), for a server that streams no event for a token "
          "without text unless logprobs are asked for (mlaserve streams every token); costs the workers a logits "
          "copy per step. -1: not asked for; usage counts the tokens either way");
ABSL_FLAG(std::string, sweep, "",
          "concurrency levels, as 1,16,64,256: run the workload closed loop once per level (each with fresh prompts "
          "from its own seed) and report a row per level; --json_out gets an array of levels");
ABSL_FLAG(int64_t, sweep_waves, 0,
          "with --sweep: each level sends this many times its concurrency in requests, so a level of 1 is as short as "
          "one of 256 (random and shared_prefix workloads; 0: --num_requests at every level)");
ABSL_FLAG(std::string, plot_out, "",
          "with --sweep: draw output tok/s and TTFT/TPOT p50/p99 against concurrency into this PNG with gnuplot "
          "(its script is written beside it, .gp)");
ABSL_FLAG(std::string, json_out, "", "also write the results and this configuration to this JSON file");
ABSL_FLAG(double, timeout_s, 600, "per-request timeout in seconds");
ABSL_FLAG(int64_t, warmup, 1, "requests sent one at a time before the run, not counted");

namespace mlaserve::bench {
namespace {

constexpr int32_t kFallbackVocabHigh = 1000;
// Warmup prompts come from seed + this; sweep levels take seed, seed + 1, ...
// so no measured prompt repeats a warmup prompt the prefix cache holds.
constexpr uint64_t kWarmupSeedOffset = uint64_t{1} << 32;

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
                     .seed = absl::GetFlag(FLAGS_seed),
                     .ignore_eos = absl::GetFlag(FLAGS_ignore_eos),
                     .logprobs = absl::GetFlag(FLAGS_logprobs)};
}

// Random prompts of the run's lengths, sent one at a time so the server's
// first-request costs stay out of the numbers. They come from another seed,
// so they do not warm the prefix cache for the measured prompts.
absl::Status Warmup(WorkloadOptions workload, const LoadOptions& load, int64_t max_model_len) {
  const int64_t count = absl::GetFlag(FLAGS_warmup);
  if (count <= 0) return absl::OkStatus();
  workload.kind = WorkloadKind::kRandom;
  workload.num_requests = count;
  workload.seed += kWarmupSeedOffset;
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
          {"ignore_eos", load.ignore_eos},
          {"logprobs", load.logprobs},
          {"warmup", absl::GetFlag(FLAGS_warmup)}};
}

absl::Status WriteJson(const std::string& path, const nlohmann::json& json) {
  std::ofstream out(path);
  out << json.dump(2) << "\n";
  out.close();
  if (!out) return absl::InternalError("cannot write " + path);
  return absl::OkStatus();
}

absl::Status FailedRequests(int64_t failed, int64_t total, const std::vector<std::string>& first_errors) {
  if (failed == 0) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(failed, " of ", total, " requests failed; the first errors:\n  ",
                                             absl::StrJoin(first_errors, "\n  ")));
}

// "x.png" -> "x.gp": the chart's script, kept so the chart can be redrawn or restyled.
std::string PlotScriptPath(std::string png_path) {
  if (absl::EndsWithIgnoreCase(png_path, ".png")) png_path.resize(png_path.size() - 4);
  return png_path + ".gp";
}

// Before anything runs, so a mistyped flag costs no warmup.
absl::Status ValidateSweepFlags() {
  const std::string sweep = absl::GetFlag(FLAGS_sweep);
  if (absl::GetFlag(FLAGS_sweep_waves) < 0) return absl::InvalidArgumentError("--sweep_waves must be 0 or more");
  if (sweep.empty()) {
    if (!absl::GetFlag(FLAGS_plot_out).empty()) return absl::InvalidArgumentError("--plot_out needs --sweep");
    if (absl::GetFlag(FLAGS_sweep_waves) != 0) return absl::InvalidArgumentError("--sweep_waves needs --sweep");
    return absl::OkStatus();
  }
  if (absl::GetFlag(FLAGS_concurrency) != 0) {
    return absl::InvalidArgumentError("--sweep sets each level's concurrency; drop --concurrency");
  }
  return ParseConcurrencyList(sweep).status();
}

// Timings at events coarser than tokens are easy to misread as the server's
// token pace, so say so where it happened.
void WarnIfCoarse(const BenchmarkSummary& summary, const std::string& where) {
  if (summary.requests_missing_token_events == 0) return;
  std::cerr << "bench: warning: " << where << summary.requests_missing_token_events << " of " << summary.completed
            << " requests streamed fewer events than output tokens (the server sent none for some tokens, as some do "
               "for tokens without text), so their TTFT/ITL/TPOT are coarse; token counts and throughputs are exact. "
               "--logprobs=0 may make the server stream every token.\n";
}

// Level i of a sweep draws its workload from seed + i: repeating the same
// prompts would let later levels hit the prefix cache earlier levels filled.
WorkloadOptions LevelWorkload(WorkloadOptions workload, size_t level, int64_t concurrency) {
  workload.seed += level;
  if (const int64_t waves = absl::GetFlag(FLAGS_sweep_waves); waves > 0) workload.num_requests = waves * concurrency;
  return workload;
}

absl::StatusOr<std::vector<SweepLevel>> SweepLevels(const WorkloadOptions& workload, int64_t max_model_len) {
  ASSIGN_OR_RETURN(std::vector<int64_t> concurrencies, ParseConcurrencyList(absl::GetFlag(FLAGS_sweep)));
  std::vector<SweepLevel> levels;
  for (size_t i = 0; i < concurrencies.size(); ++i) {
    ASSIGN_OR_RETURN(std::vector<Session> sessions, GenerateWorkload(LevelWorkload(workload, i, concurrencies[i])));
    RETURN_IF_ERROR(CheckFitsContext(sessions, max_model_len));
    if (static_cast<int64_t>(sessions.size()) < concurrencies[i]) {
      std::cerr << "bench: warning: concurrency " << concurrencies[i] << " exceeds the " << sessions.size()
                << " sessions of a level, so no more than those run at once; raise --num_requests "
                   "(--num_conversations for multi_turn)\n";
    }
    levels.push_back({.concurrency = concurrencies[i], .sessions = std::move(sessions)});
  }
  return levels;
}

absl::Status RunSweepFromFlags(const ModelInfo& model, const WorkloadOptions& workload, LoadOptions load) {
  ASSIGN_OR_RETURN(std::vector<SweepLevel> levels, SweepLevels(workload, model.max_model_len));
  RETURN_IF_ERROR(Warmup(workload, load, model.max_model_len));
  std::cerr << "bench: sweeping concurrency " << absl::GetFlag(FLAGS_sweep) << " over " << model.id << " at "
            << load.url << "\n";
  load.on_request_done = ProgressPrinter();
  ASSIGN_OR_RETURN(std::vector<SweepPoint> points, RunSweep(levels, load, [](const SweepPoint& point) {
                     std::cerr << "bench: " << FormatSweepLine(point) << "\n";
                     WarnIfCoarse(point.summary, absl::StrCat("at concurrency ", point.concurrency, ", "));
                   }));
  std::cout << FormatSweepTable(points);

  if (const std::string path = absl::GetFlag(FLAGS_json_out); !path.empty()) {
    nlohmann::json json = SweepJson(points);
    for (size_t i = 0; i < points.size(); ++i) {
      LoadOptions level_load = load;
      level_load.concurrency = points[i].concurrency;
      json[i]["config"] = ConfigJson(model, LevelWorkload(workload, i, points[i].concurrency), level_load);
    }
    RETURN_IF_ERROR(WriteJson(path, json));
  }
  // After the JSON, which a missing gnuplot must not cost.
  absl::Status plotted = absl::OkStatus();
  if (const std::string png = absl::GetFlag(FLAGS_plot_out); !png.empty()) {
    const std::string title =
        absl::StrCat(model.id, ": ", absl::GetFlag(FLAGS_workload), " workload, ", workload.input_len, " input / ",
                     workload.output_len, " output tokens, closed loop");
    plotted = RunGnuplot(GnuplotScript(points, png, title), PlotScriptPath(png));
    if (plotted.ok()) std::cerr << "bench: wrote " << png << "\n";
  }

  int64_t failed = 0, total = 0;
  std::vector<std::string> first_errors;
  for (const SweepPoint& point : points) {
    failed += point.summary.failed;
    total += point.summary.failed + point.summary.completed;
    if (first_errors.empty()) first_errors = point.summary.first_errors;
  }
  const absl::Status requests = FailedRequests(failed, total, first_errors);
  if (plotted.ok()) return requests;
  if (!requests.ok()) std::cerr << "bench: " << requests.message() << "\n";
  const std::string json_note = absl::GetFlag(FLAGS_json_out).empty() ? "" : "; the JSON is written";
  return absl::Status(plotted.code(), absl::StrCat("no plot: ", plotted.message(), json_note));
}

absl::Status Run() {
  RETURN_IF_ERROR(ValidateSweepFlags());
  std::string url = absl::GetFlag(FLAGS_url);
  url.erase(url.find_last_not_of('/') + 1);  // httplib takes no path, not even "/"
  ASSIGN_OR_RETURN(ModelInfo model, FetchModelInfo(url, absl::GetFlag(FLAGS_model)));
  ASSIGN_OR_RETURN(WorkloadOptions workload, WorkloadFromFlags(model));
  LoadOptions load = LoadFromFlags(url, model.id);
  if (!absl::GetFlag(FLAGS_sweep).empty()) return RunSweepFromFlags(model, workload, load);

  ASSIGN_OR_RETURN(std::vector<Session> sessions, GenerateWorkload(workload));
  RETURN_IF_ERROR(CheckFitsContext(sessions, model.max_model_len));
  RETURN_IF_ERROR(Warmup(workload, load, model.max_model_len));

  std::cerr << "bench: " << CountRequests(sessions) << " requests to " << model.id << " at " << url << "\n";
  load.on_request_done = ProgressPrinter();
  ASSIGN_OR_RETURN(LoadResult result, RunLoad(sessions, load));
  BenchmarkSummary summary = Summarize(result.requests, result.duration_s);
  summary.engine = result.engine;
  std::cout << FormatTable(summary);
  WarnIfCoarse(summary, "");
  if (const std::string path = absl::GetFlag(FLAGS_json_out); !path.empty()) {
    nlohmann::json json = ToJson(summary);
    json["config"] = ConfigJson(model, workload, load);
    RETURN_IF_ERROR(WriteJson(path, json));
  }
  return FailedRequests(summary.failed, static_cast<int64_t>(result.requests.size()), summary.first_errors);
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
