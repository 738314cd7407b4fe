// What a serving benchmark measured: one record per request, and the summary
// vLLM's benchmark_serving.py prints (throughputs, TTFT/TPOT/ITL/E2E
// percentiles, prefix-cache hit rate), as a table and as JSON; and a sweep
// over concurrency levels as a table, JSON and a gnuplot chart.
#ifndef MLASERVE_TESTS_BENCH_STATS_H_
#define MLASERVE_TESTS_BENCH_STATS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace mlaserve::bench {

// One request as the client saw it. Times are milliseconds from sending it.
// Times are taken at streamed events that carry a choice, whether or not its
// text is empty: a random-weights model samples ids that detokenize to
// nothing, yet each is an output token the user waited for. Token counts come
// from the server's usage, never from the text.
struct RequestResult {
  bool success = false;
  std::string error;           // why it failed; empty on success
  double ttft_ms = 0;          // to the first event with a choice
  double e2e_ms = 0;           // to the end of the response
  std::vector<double> itl_ms;  // gaps between successive events with a choice
  int64_t choice_events = 0;   // events with a choice: fewer than completion_tokens when some had none
  // From the stream's closing usage chunk.
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
};

// Time per output token after the first: (e2e - ttft) / (completion_tokens - 1).
// Requests with fewer than two output tokens have none.
std::optional<double> TpotMs(const RequestResult& result);

// The p-th percentile (0..100) with linear interpolation between closest
// ranks, as numpy.percentile computes it. 0 for no values.
double Percentile(std::vector<double> values, double p);

struct Distribution {
  int64_t count = 0;  // all four statistics are 0 when there are no samples
  double mean = 0;
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
};
Distribution Summarize(const std::vector<double>& values);

// The server's engine-loop counters (mlaserve's /metrics), summed over
// engine groups.
struct EngineCounters {
  double steps = 0;
  double sequences = 0;     // launched, summed over steps
  double host_seconds = 0;  // scheduling, building steps, applying tokens
  double wait_seconds = 0;  // waiting for the workers
};
// The counters in a Prometheus text exposition; NotFound unless it has
// mlaserve_engine_steps_total (another server, or an older mlaserve).
absl::StatusOr<EngineCounters> ParseEngineCounters(absl::string_view metrics);

// What the engine loops did during a run: the serving path's own cost per
// step beside the time the workers took.
struct EngineSteps {
  int64_t steps = 0;
  double sequences_per_step = 0;
  double host_ms_per_step = 0;
  double wait_ms_per_step = 0;
};
// REQUIRES: `after` was read after `before` from the same server.
EngineSteps EngineStepsBetween(const EngineCounters& before, const EngineCounters& after);

struct BenchmarkSummary {
  int64_t completed = 0;
  int64_t failed = 0;
  double duration_s = 0;
  // Token totals and throughputs count successful requests only.
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  int64_t cached_tokens = 0;
  double request_throughput = 0;      // completed requests per second
  double input_throughput = 0;        // prompt tokens per second, cached ones included
  double output_throughput = 0;       // output tokens per second
  double total_token_throughput = 0;  // input and output tokens per second
  double prefix_cache_hit_rate = 0;   // cached / input tokens, 0..1
  // Successful requests that streamed fewer events with a choice than output
  // tokens: their TTFT and ITL are timed at coarser events than tokens.
  int64_t requests_missing_token_events = 0;
  Distribution ttft_ms;
  Distribution tpot_ms;
  Distribution itl_ms;  // every gap of every request, pooled
  Distribution e2e_ms;
  std::vector<std::string> first_errors;  // of the first few failed requests
  std::optional<EngineSteps> engine;      // when the server reports its engine loop
};

// `duration_s` is the wall time of the whole run.
BenchmarkSummary Summarize(const std::vector<RequestResult>& results, double duration_s);

// The human-readable report for stdout.
std::string FormatTable(const BenchmarkSummary& summary);
// The same numbers as JSON; callers add their configuration beside them.
nlohmann::json ToJson(const BenchmarkSummary& summary);

// One level of a concurrency sweep: a closed-loop run at `concurrency`.
struct SweepPoint {
  int64_t concurrency = 0;
  BenchmarkSummary summary;
};

// One line for stderr as each level ends: its throughputs and latencies.
std::string FormatSweepLine(const SweepPoint& point);
// A table with a row per level, for stdout once the sweep ends.
std::string FormatSweepTable(const std::vector<SweepPoint>& points);
// An array with an object per level, in the order given: ToJson of its
// summary plus "concurrency". Callers may add fields to each element.
nlohmann::json SweepJson(const std::vector<SweepPoint>& points);

// A gnuplot script that draws the sweep into the PNG `png_path`: output
// tokens/s against concurrency, and TTFT and TPOT p50/p99 against
// concurrency, both on a log concurrency axis. The data is inline, so the
// script alone redraws the chart. REQUIRES: `points` is not empty, every
// concurrency is positive.
std::string GnuplotScript(const std::vector<SweepPoint>& points, const std::string& png_path,
                          const std::string& title);

// Writes `script` to `script_path`, then runs `gnuplot script_path` and waits
// for it. NotFound when `gnuplot` cannot be started (not installed or not on
// PATH); Internal when the file cannot be written or gnuplot fails.
absl::Status RunGnuplot(const std::string& script, const std::string& script_path,
                        const std::string& gnuplot = "gnuplot");

}  // namespace mlaserve::bench

#endif  // MLASERVE_TESTS_BENCH_STATS_H_
