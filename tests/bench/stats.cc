#include "tests/bench/stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mlaserve::bench {
namespace {

constexpr size_t kMaxReportedErrors = 5;
constexpr int kTableWidth = 50;

double Ratio(double numerator, double denominator) { return denominator > 0 ? numerator / denominator : 0; }

// "----Title----", `title` centred in the table's width.
std::string Banner(const std::string& title, char fill) {
  const int padding = std::max(0, kTableWidth - static_cast<int>(title.size()));
  return absl::StrCat(std::string(padding / 2, fill), title, std::string(padding - padding / 2, fill), "\n");
}

std::string Row(const std::string& label, double value) { return absl::StrFormat("%-40s%.2f\n", label, value); }
std::string Row(const std::string& label, int64_t value) { return absl::StrFormat("%-40s%d\n", label, value); }

std::string DistributionRows(const std::string& title, const std::string& name, const Distribution& d) {
  return absl::StrCat(Banner(title, '-'), Row(absl::StrCat("Mean ", name, " (ms):"), d.mean),
                      Row(absl::StrCat("P50 ", name, " (ms):"), d.p50),
                      Row(absl::StrCat("P90 ", name, " (ms):"), d.p90),
                      Row(absl::StrCat("P99 ", name, " (ms):"), d.p99));
}

nlohmann::json DistributionJson(const Distribution& d) {
  return {{"count", d.count}, {"mean", d.mean}, {"p50", d.p50}, {"p90", d.p90}, {"p99", d.p99}};
}

}  // namespace

std::optional<double> TpotMs(const RequestResult& result) {
  if (result.completion_tokens < 2) return std::nullopt;
  return (result.e2e_ms - result.ttft_ms) / static_cast<double>(result.completion_tokens - 1);
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  const size_t below = static_cast<size_t>(std::floor(rank));
  const size_t above = std::min(below + 1, values.size() - 1);
  return values[below] + (values[above] - values[below]) * (rank - static_cast<double>(below));
}

Distribution Summarize(const std::vector<double>& values) {
  if (values.empty()) return {};
  return {.count = static_cast<int64_t>(values.size()),
          .mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size()),
          .p50 = Percentile(values, 50),
          .p90 = Percentile(values, 90),
          .p99 = Percentile(values, 99)};
}

BenchmarkSummary Summarize(const std::vector<RequestResult>& results, double duration_s) {
  BenchmarkSummary summary;
  summary.duration_s = duration_s;
  std::vector<double> ttft, tpot, itl, e2e;
  for (const RequestResult& r : results) {
    if (!r.success) {
      ++summary.failed;
      if (summary.first_errors.size() < kMaxReportedErrors) summary.first_errors.push_back(r.error);
      continue;
    }
    ++summary.completed;
    summary.input_tokens += r.prompt_tokens;
    summary.output_tokens += r.completion_tokens;
    summary.cached_tokens += r.cached_tokens;
    ttft.push_back(r.ttft_ms);
    e2e.push_back(r.e2e_ms);
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    if (std::optional<double> t = TpotMs(r)) tpot.push_back(*t);
  }
  summary.request_throughput = Ratio(summary.completed, duration_s);
  summary.output_throughput = Ratio(summary.output_tokens, duration_s);
  summary.total_token_throughput = Ratio(summary.input_tokens + summary.output_tokens, duration_s);
  summary.prefix_cache_hit_rate = Ratio(summary.cached_tokens, summary.input_tokens);
  summary.ttft_ms = Summarize(ttft);
  summary.tpot_ms = Summarize(tpot);
  summary.itl_ms = Summarize(itl);
  summary.e2e_ms = Summarize(e2e);
  return summary;
}

std::string FormatTable(const BenchmarkSummary& s) {
  return absl::StrCat(Banner(" Serving Benchmark Result ", '='), Row("Successful requests:", s.completed),
                      Row("Failed requests:", s.failed), Row("Benchmark duration (s):", s.duration_s),
                      Row("Total input tokens:", s.input_tokens), Row("Total generated tokens:", s.output_tokens),
                      Row("Cached prompt tokens:", s.cached_tokens),
                      Row("Request throughput (req/s):", s.request_throughput),
                      Row("Output token throughput (tok/s):", s.output_throughput),
                      Row("Total token throughput (tok/s):", s.total_token_throughput),
                      Row("Prefix cache hit rate (%):", 100 * s.prefix_cache_hit_rate),
                      DistributionRows("Time to First Token", "TTFT", s.ttft_ms),
                      DistributionRows("Time per Output Token (excl. 1st token)", "TPOT", s.tpot_ms),
                      DistributionRows("Inter-token Latency", "ITL", s.itl_ms),
                      DistributionRows("End-to-end Latency", "E2E", s.e2e_ms), std::string(kTableWidth, '='), "\n");
}

nlohmann::json ToJson(const BenchmarkSummary& s) {
  return {{"completed", s.completed},
          {"failed", s.failed},
          {"duration_s", s.duration_s},
          {"total_input_tokens", s.input_tokens},
          {"total_output_tokens", s.output_tokens},
          {"total_cached_tokens", s.cached_tokens},
          {"request_throughput", s.request_throughput},
          {"output_throughput", s.output_throughput},
          {"total_token_throughput", s.total_token_throughput},
          {"prefix_cache_hit_rate", s.prefix_cache_hit_rate},
          {"ttft_ms", DistributionJson(s.ttft_ms)},
          {"tpot_ms", DistributionJson(s.tpot_ms)},
          {"itl_ms", DistributionJson(s.itl_ms)},
          {"e2e_ms", DistributionJson(s.e2e_ms)},
          {"errors", s.first_errors}};
}

}  // namespace mlaserve::bench
