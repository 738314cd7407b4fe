#include "tests/bench/stats.h"

#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"

extern char** environ;

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

// A gnuplot single-quoted string: nothing is escaped inside one but the
// quote, which doubles. Newlines would end the command, so they become spaces.
std::string GnuplotString(const std::string& text) {
  return absl::StrCat("'", absl::StrReplaceAll(text, {{"'", "''"}, {"\n", " "}}), "'");
}

// A percentile for the chart's data; NaN, which gnuplot leaves out, when the
// level has no samples, as 0 would sit off a log axis.
std::string PlotValue(const Distribution& d, double value) {
  return d.count > 0 ? absl::StrFormat("%.6g", value) : "NaN";
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
    if (r.choice_events < r.completion_tokens) ++summary.requests_missing_token_events;
    ttft.push_back(r.ttft_ms);
    e2e.push_back(r.e2e_ms);
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    if (std::optional<double> t = TpotMs(r)) tpot.push_back(*t);
  }
  summary.request_throughput = Ratio(summary.completed, duration_s);
  summary.input_throughput = Ratio(summary.input_tokens, duration_s);
  summary.output_throughput = Ratio(summary.output_tokens, duration_s);
  summary.total_token_throughput = Ratio(summary.input_tokens + summary.output_tokens, duration_s);
  summary.prefix_cache_hit_rate = Ratio(summary.cached_tokens, summary.input_tokens);
  summary.ttft_ms = Summarize(ttft);
  summary.tpot_ms = Summarize(tpot);
  summary.itl_ms = Summarize(itl);
  summary.e2e_ms = Summarize(e2e);
  return summary;
}

absl::StatusOr<EngineCounters> ParseEngineCounters(absl::string_view metrics) {
  EngineCounters counters;
  bool found = false;
  for (absl::string_view line : absl::StrSplit(metrics, '\n')) {
    if (line.empty() || line.front() == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    absl::string_view name = line.substr(0, space);
    name = name.substr(0, name.find('{'));
    double value = 0;
    if (!absl::SimpleAtod(line.substr(space + 1), &value)) continue;
    if (name == "mlaserve_engine_steps_total") {
      counters.steps += value;
      found = true;
    } else if (name == "mlaserve_engine_step_sequences_total") {
      counters.sequences += value;
    } else if (name == "mlaserve_engine_host_seconds_total") {
      counters.host_seconds += value;
    } else if (name == "mlaserve_engine_wait_seconds_total") {
      counters.wait_seconds += value;
    }
  }
  if (!found) return absl::NotFoundError("the server reports no mlaserve_engine_steps_total");
  return counters;
}

EngineSteps EngineStepsBetween(const EngineCounters& before, const EngineCounters& after) {
  const double steps = after.steps - before.steps;
  return {.steps = static_cast<int64_t>(steps),
          .sequences_per_step = Ratio(after.sequences - before.sequences, steps),
          .host_ms_per_step = 1e3 * Ratio(after.host_seconds - before.host_seconds, steps),
          .wait_ms_per_step = 1e3 * Ratio(after.wait_seconds - before.wait_seconds, steps)};
}

std::string FormatTable(const BenchmarkSummary& s) {
  std::string engine;
  if (s.engine.has_value()) {
    engine = absl::StrCat(Banner(" Server Engine Steps ", '-'), Row("Steps:", s.engine->steps),
                          Row("Sequences per step:", s.engine->sequences_per_step),
                          Row("Host time per step (ms):", s.engine->host_ms_per_step),
                          Row("Worker wait per step (ms):", s.engine->wait_ms_per_step));
  }
  return absl::StrCat(Banner(" Serving Benchmark Result ", '='), Row("Successful requests:", s.completed),
                      Row("Failed requests:", s.failed), Row("Benchmark duration (s):", s.duration_s),
                      Row("Total input tokens:", s.input_tokens), Row("Total generated tokens:", s.output_tokens),
                      Row("Cached prompt tokens:", s.cached_tokens),
                      Row("Request throughput (req/s):", s.request_throughput),
                      Row("Input token throughput (tok/s):", s.input_throughput),
                      Row("Output token throughput (tok/s):", s.output_throughput),
                      Row("Total token throughput (tok/s):", s.total_token_throughput),
                      Row("Prefix cache hit rate (%):", 100 * s.prefix_cache_hit_rate),
                      DistributionRows("Time to First Token", "TTFT", s.ttft_ms),
                      DistributionRows("Time per Output Token (excl. 1st token)", "TPOT", s.tpot_ms),
                      DistributionRows("Inter-token Latency", "ITL", s.itl_ms),
                      DistributionRows("End-to-end Latency", "E2E", s.e2e_ms), engine, std::string(kTableWidth, '='),
                      "\n");
}

nlohmann::json ToJson(const BenchmarkSummary& s) {
  nlohmann::json json = {{"completed", s.completed},
          {"failed", s.failed},
          {"duration_s", s.duration_s},
          {"total_input_tokens", s.input_tokens},
          {"total_output_tokens", s.output_tokens},
          {"total_cached_tokens", s.cached_tokens},
          {"request_throughput", s.request_throughput},
          {"input_throughput", s.input_throughput},
          {"output_throughput", s.output_throughput},
          {"total_token_throughput", s.total_token_throughput},
          {"prefix_cache_hit_rate", s.prefix_cache_hit_rate},
          {"requests_missing_token_events", s.requests_missing_token_events},
          {"ttft_ms", DistributionJson(s.ttft_ms)},
          {"tpot_ms", DistributionJson(s.tpot_ms)},
          {"itl_ms", DistributionJson(s.itl_ms)},
          {"e2e_ms", DistributionJson(s.e2e_ms)},
          {"errors", s.first_errors}};
  if (s.engine.has_value()) {
    json["engine"] = {{"steps", s.engine->steps},
                      {"sequences_per_step", s.engine->sequences_per_step},
                      {"host_ms_per_step", s.engine->host_ms_per_step},
                      {"wait_ms_per_step", s.engine->wait_ms_per_step}};
  }
  return json;
}

std::string FormatSweepLine(const SweepPoint& point) {
  const BenchmarkSummary& s = point.summary;
  return absl::StrFormat(
      "concurrency %d: %.2f output tok/s, %.2f input tok/s, %.2f req/s, TTFT p50/p99 %.2f/%.2f ms, "
      "TPOT p50/p99 %.2f/%.2f ms, ITL p50/p99 %.2f/%.2f ms, %d of %d requests failed%s",
      point.concurrency, s.output_throughput, s.input_throughput, s.request_throughput, s.ttft_ms.p50, s.ttft_ms.p99,
      s.tpot_ms.p50, s.tpot_ms.p99, s.itl_ms.p50, s.itl_ms.p99, s.failed, s.completed + s.failed,
      s.engine.has_value() ? absl::StrFormat("; server: %.1f sequences/step, host %.3f ms + wait %.3f ms per step",
                                             s.engine->sequences_per_step, s.engine->host_ms_per_step,
                                             s.engine->wait_ms_per_step)
                           : "");
}

std::string FormatSweepTable(const std::vector<SweepPoint>& points) {
  constexpr char kRow[] = "%11s %9s %10s %10s %9s %9s %9s %9s %9s %9s %6s\n";
  std::string table = absl::StrCat(Banner(" Concurrency Sweep (latencies in ms) ", '='),
                                   absl::StrFormat(kRow, "concurrency", "req/s", "out tok/s", "in tok/s", "TTFT p50",
                                                   "TTFT p99", "TPOT p50", "TPOT p99", "ITL p50", "ITL p99", "failed"));
  for (const SweepPoint& point : points) {
    const BenchmarkSummary& s = point.summary;
    auto number = [](double value) { return absl::StrFormat("%.2f", value); };
    absl::StrAppend(&table, absl::StrFormat(kRow, absl::StrCat(point.concurrency), number(s.request_throughput),
                                            number(s.output_throughput), number(s.input_throughput),
                                            number(s.ttft_ms.p50), number(s.ttft_ms.p99), number(s.tpot_ms.p50),
                                            number(s.tpot_ms.p99), number(s.itl_ms.p50), number(s.itl_ms.p99),
                                            absl::StrCat(s.failed)));
  }
  return table;
}

nlohmann::json SweepJson(const std::vector<SweepPoint>& points) {
  nlohmann::json levels = nlohmann::json::array();
  for (const SweepPoint& point : points) {
    nlohmann::json level = ToJson(point.summary);
    level["concurrency"] = point.concurrency;
    levels.push_back(std::move(level));
  }
  return levels;
}

std::string GnuplotScript(const std::vector<SweepPoint>& points, const std::string& png_path,
                          const std::string& title) {
  std::vector<std::string> rows, tics;
  for (const SweepPoint& p : points) {
    const BenchmarkSummary& s = p.summary;
    rows.push_back(absl::StrCat(p.concurrency, " ", absl::StrFormat("%.6g", s.output_throughput), " ",
                                PlotValue(s.ttft_ms, s.ttft_ms.p50), " ", PlotValue(s.ttft_ms, s.ttft_ms.p99), " ",
                                PlotValue(s.tpot_ms, s.tpot_ms.p50), " ", PlotValue(s.tpot_ms, s.tpot_ms.p99)));
    tics.push_back(absl::StrCat("\"", p.concurrency, "\" ", p.concurrency));
  }
  auto line = [](int column, int point_type, int dash, const char* name) {
    return absl::StrFormat("$sweep using 1:%d with linespoints lw 2 pt %d dt %d title '%s'", column, point_type, dash,
                           name);
  };
  return absl::StrCat(
      "# Written by //:bench --sweep; `gnuplot` on this file redraws the chart.\n",
      // noenhanced: titles such as "shared_prefix" would otherwise turn "_" into a subscript.
      "set terminal pngcairo noenhanced size 1400,560\n",
      "set output ", GnuplotString(png_path), "\n",
      "# concurrency, output tok/s, TTFT p50, TTFT p99, TPOT p50, TPOT p99 (ms); NaN: no samples\n",
      "$sweep << EOD\n", absl::StrJoin(rows, "\n"), "\nEOD\n",
      "set multiplot layout 1,2 title ", GnuplotString(title), "\n",
      // Concurrency levels grow geometrically; ticks sit at the measured levels only.
      "set logscale x 2\n",
      "set xtics (", absl::StrJoin(tics, ", "), ")\n",
      "set offsets graph 0.05, graph 0.05, 0, 0\n",
      "set xlabel 'concurrency (requests in flight)'\n",
      "set grid\n",
      "set key top left\n",
      "set ylabel 'output tokens/s'\n",
      "set yrange [0:*]\n",
      "plot ", line(2, 7, 1, "output tok/s"), "\n",
      // TTFT and TPOT differ by orders of magnitude: on a linear axis TPOT would lie flat on the floor.
      "set ylabel 'latency (ms)'\n",
      "set yrange [*:*]\n",
      "set logscale y 10\n",
      "plot ", line(3, 7, 1, "TTFT p50"), ", \\\n     ", line(4, 7, 2, "TTFT p99"), ", \\\n     ",
      line(5, 5, 1, "TPOT p50"), ", \\\n     ", line(6, 5, 2, "TPOT p99"), "\n",
      "unset multiplot\n");
}

absl::Status RunGnuplot(const std::string& script, const std::string& script_path, const std::string& gnuplot) {
  std::ofstream out(script_path);
  out << script;
  out.close();
  if (!out) return absl::InternalError("cannot write " + script_path);

  std::vector<std::string> args = {gnuplot, script_path};
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  pid_t pid;
  // posix_spawnp reports a missing binary as its own error, which a shell would blur into exit status 127.
  const int error = posix_spawnp(&pid, gnuplot.c_str(), nullptr, nullptr, argv.data(), environ);
  if (error == ENOENT) {
    return absl::NotFoundError(absl::StrCat("cannot run ", gnuplot,
                                            ": not installed or not on PATH (Debian: apt-get install gnuplot-nox); ",
                                            "its script is at ", script_path));
  }
  if (error != 0) return absl::InternalError(absl::StrCat("cannot run ", gnuplot, ": ", std::strerror(error)));
  int wait_status = 0;
  while (waitpid(pid, &wait_status, 0) < 0) {
    if (errno != EINTR) return absl::InternalError(absl::StrCat("waiting for ", gnuplot, ": ", std::strerror(errno)));
  }
  if (!WIFEXITED(wait_status) || WEXITSTATUS(wait_status) != 0) {
    return absl::InternalError(absl::StrCat(gnuplot, " failed (wait status ", wait_status, ") on ", script_path));
  }
  return absl::OkStatus();
}

}  // namespace mlaserve::bench
