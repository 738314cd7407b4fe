// What a serving benchmark measured: one record per request, and the summary
// vLLM's benchmark_serving.py prints (throughputs, TTFT/TPOT/ITL/E2E
// percentiles, prefix-cache hit rate), as a table and as JSON.
#ifndef MLASERVE_TESTS_BENCH_STATS_H_
#define MLASERVE_TESTS_BENCH_STATS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace mlaserve::bench {

// One request as the client saw it. Times are milliseconds from sending it.
struct RequestResult {
  bool success = false;
  std::string error;           // why it failed; empty on success
  double ttft_ms = 0;          // to the first non-empty text delta
  double e2e_ms = 0;           // to the end of the response
  std::vector<double> itl_ms;  // gaps between successive text deltas
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

struct BenchmarkSummary {
  int64_t completed = 0;
  int64_t failed = 0;
  double duration_s = 0;
  // Token totals and throughputs count successful requests only.
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  int64_t cached_tokens = 0;
  double request_throughput = 0;      // completed requests per second
  double output_throughput = 0;       // output tokens per second
  double total_token_throughput = 0;  // input and output tokens per second
  double prefix_cache_hit_rate = 0;   // cached / input tokens, 0..1
  Distribution ttft_ms;
  Distribution tpot_ms;
  Distribution itl_ms;  // every gap of every request, pooled
  Distribution e2e_ms;
  std::vector<std::string> first_errors;  // of the first few failed requests
};

// `duration_s` is the wall time of the whole run.
BenchmarkSummary Summarize(const std::vector<RequestResult>& results, double duration_s);

// The human-readable report for stdout.
std::string FormatTable(const BenchmarkSummary& summary);
// The same numbers as JSON; callers add their configuration beside them.
nlohmann::json ToJson(const BenchmarkSummary& summary);

}  // namespace mlaserve::bench

#endif  // MLASERVE_TESTS_BENCH_STATS_H_
