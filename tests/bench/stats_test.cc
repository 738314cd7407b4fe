#include "tests/bench/stats.h"

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/status/status.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace mlaserve::bench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// One event per gap and one more, as a stream has.
RequestResult Succeeded(double ttft_ms, double e2e_ms, std::vector<double> itl_ms, int64_t prompt_tokens,
                        int64_t completion_tokens, int64_t cached_tokens) {
  const int64_t events = static_cast<int64_t>(itl_ms.size()) + 1;
  return {.success = true,
          .ttft_ms = ttft_ms,
          .e2e_ms = e2e_ms,
          .itl_ms = std::move(itl_ms),
          .choice_events = events,
          .prompt_tokens = prompt_tokens,
          .completion_tokens = completion_tokens,
          .cached_tokens = cached_tokens};
}

RequestResult Failed(const std::string& error) { return {.success = false, .error = error}; }

// Three successes and one failure over two seconds; the expected numbers below are worked by hand.
std::vector<RequestResult> MixedRun() {
  return {Succeeded(10, 110, {20, 30, 50}, 100, 11, 50), Succeeded(20, 220, {40}, 300, 5, 0),
          Succeeded(30, 30, {}, 100, 1, 100), Failed("HTTP 400: prompt is too long")};
}

TEST(PercentileTest, InterpolatesBetweenClosestRanksLikeNumpy) {
  const std::vector<double> values = {4, 1, 3, 2};
  EXPECT_DOUBLE_EQ(Percentile(values, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile(values, 50), 2.5);
  EXPECT_DOUBLE_EQ(Percentile(values, 90), 3.7);
  EXPECT_DOUBLE_EQ(Percentile(values, 99), 3.97);
  EXPECT_DOUBLE_EQ(Percentile(values, 100), 4);
}

TEST(PercentileTest, SingleAndNoValues) {
  EXPECT_DOUBLE_EQ(Percentile({5}, 0), 5);
  EXPECT_DOUBLE_EQ(Percentile({5}, 99), 5);
  EXPECT_DOUBLE_EQ(Percentile({}, 50), 0);
}

TEST(DistributionTest, MeanAndPercentiles) {
  const Distribution d = Summarize(std::vector<double>{10, 30, 20});
  EXPECT_EQ(d.count, 3);
  EXPECT_DOUBLE_EQ(d.mean, 20);
  EXPECT_DOUBLE_EQ(d.p50, 20);
  EXPECT_DOUBLE_EQ(d.p90, 28);
  EXPECT_DOUBLE_EQ(d.p99, 29.8);
}

TEST(DistributionTest, EmptyIsAllZero) {
  const Distribution d = Summarize(std::vector<double>{});
  EXPECT_EQ(d.count, 0);
  EXPECT_EQ(d.mean, 0);
  EXPECT_EQ(d.p99, 0);
}

TEST(TpotTest, ExcludesTheFirstToken) {
  EXPECT_DOUBLE_EQ(*TpotMs(Succeeded(10, 110, {}, 1, 11, 0)), 10);
  EXPECT_FALSE(TpotMs(Succeeded(10, 110, {}, 1, 1, 0)).has_value());
  EXPECT_FALSE(TpotMs(Succeeded(10, 110, {}, 1, 0, 0)).has_value());
}

TEST(SummarizeTest, CountsAndThroughputsOfSuccessfulRequests) {
  const BenchmarkSummary s = Summarize(MixedRun(), 2.0);
  EXPECT_EQ(s.completed, 3);
  EXPECT_EQ(s.failed, 1);
  EXPECT_DOUBLE_EQ(s.duration_s, 2.0);
  EXPECT_EQ(s.input_tokens, 500);
  EXPECT_EQ(s.output_tokens, 17);
  EXPECT_EQ(s.cached_tokens, 150);
  EXPECT_DOUBLE_EQ(s.request_throughput, 1.5);
  EXPECT_DOUBLE_EQ(s.input_throughput, 250);
  EXPECT_DOUBLE_EQ(s.output_throughput, 8.5);
  EXPECT_DOUBLE_EQ(s.total_token_throughput, 258.5);
  EXPECT_DOUBLE_EQ(s.prefix_cache_hit_rate, 0.3);
  // 4 events for 11 tokens and 2 for 5; the one-token request had its event.
  EXPECT_EQ(s.requests_missing_token_events, 2);
  EXPECT_THAT(s.first_errors, ElementsAre("HTTP 400: prompt is too long"));
}

TEST(SummarizeTest, LatencyDistributions) {
  const BenchmarkSummary s = Summarize(MixedRun(), 2.0);
  EXPECT_EQ(s.ttft_ms.count, 3);
  EXPECT_DOUBLE_EQ(s.ttft_ms.mean, 20);
  EXPECT_DOUBLE_EQ(s.ttft_ms.p90, 28);
  // The one-token request has no TPOT: (110-10)/10 and (220-20)/4 remain.
  EXPECT_EQ(s.tpot_ms.count, 2);
  EXPECT_DOUBLE_EQ(s.tpot_ms.mean, 30);
  EXPECT_DOUBLE_EQ(s.tpot_ms.p90, 46);
  // Every request's gaps pooled: 20, 30, 40, 50.
  EXPECT_EQ(s.itl_ms.count, 4);
  EXPECT_DOUBLE_EQ(s.itl_ms.mean, 35);
  EXPECT_DOUBLE_EQ(s.itl_ms.p50, 35);
  EXPECT_EQ(s.e2e_ms.count, 3);
  EXPECT_DOUBLE_EQ(s.e2e_ms.mean, 120);
  EXPECT_DOUBLE_EQ(s.e2e_ms.p50, 110);
}

TEST(SummarizeTest, KeepsOnlyTheFirstFewErrors) {
  std::vector<RequestResult> results;
  for (int i = 0; i < 8; ++i) results.push_back(Failed("error " + std::to_string(i)));
  const BenchmarkSummary s = Summarize(results, 1.0);
  EXPECT_EQ(s.failed, 8);
  EXPECT_EQ(s.completed, 0);
  EXPECT_THAT(s.first_errors, ElementsAre("error 0", "error 1", "error 2", "error 3", "error 4"));
  EXPECT_EQ(s.ttft_ms.count, 0);
  EXPECT_EQ(s.request_throughput, 0);
  EXPECT_EQ(s.prefix_cache_hit_rate, 0);
}

TEST(SummarizeTest, ZeroDurationGivesZeroThroughput) {
  const BenchmarkSummary s = Summarize(MixedRun(), 0);
  EXPECT_EQ(s.request_throughput, 0);
  EXPECT_EQ(s.output_throughput, 0);
}

TEST(FormatTableTest, ShowsEveryMetric) {
  const std::string table = FormatTable(Summarize(MixedRun(), 2.0));
  EXPECT_THAT(table, HasSubstr("Successful requests:                    3\n"));
  EXPECT_THAT(table, HasSubstr("Failed requests:                        1\n"));
  EXPECT_THAT(table, HasSubstr("Request throughput (req/s):             1.50\n"));
  EXPECT_THAT(table, HasSubstr("Input token throughput (tok/s):         250.00\n"));
  EXPECT_THAT(table, HasSubstr("Output token throughput (tok/s):        8.50\n"));
  EXPECT_THAT(table, HasSubstr("Total token throughput (tok/s):         258.50\n"));
  EXPECT_THAT(table, HasSubstr("Prefix cache hit rate (%):              30.00\n"));
  EXPECT_THAT(table, HasSubstr("Mean TTFT (ms):                         20.00\n"));
  EXPECT_THAT(table, HasSubstr("P90 TPOT (ms):                          46.00\n"));
  EXPECT_THAT(table, HasSubstr("P50 ITL (ms):                           35.00\n"));
  EXPECT_THAT(table, HasSubstr("P50 E2E (ms):                           110.00\n"));
}

TEST(ToJsonTest, HasTheSummaryFieldsAndDistributions) {
  const nlohmann::json json = ToJson(Summarize(MixedRun(), 2.0));
  EXPECT_EQ(json["completed"], 3);
  EXPECT_EQ(json["failed"], 1);
  EXPECT_DOUBLE_EQ(json["duration_s"].get<double>(), 2.0);
  EXPECT_EQ(json["total_input_tokens"], 500);
  EXPECT_EQ(json["total_output_tokens"], 17);
  EXPECT_EQ(json["total_cached_tokens"], 150);
  EXPECT_DOUBLE_EQ(json["request_throughput"].get<double>(), 1.5);
  EXPECT_DOUBLE_EQ(json["input_throughput"].get<double>(), 250);
  EXPECT_DOUBLE_EQ(json["output_throughput"].get<double>(), 8.5);
  EXPECT_DOUBLE_EQ(json["total_token_throughput"].get<double>(), 258.5);
  EXPECT_DOUBLE_EQ(json["prefix_cache_hit_rate"].get<double>(), 0.3);
  EXPECT_EQ(json["requests_missing_token_events"], 2);
  for (const char* metric : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    ASSERT_TRUE(json[metric].is_object()) << metric;
    for (const char* field : {"count", "mean", "p50", "p90", "p99"}) {
      EXPECT_TRUE(json[metric][field].is_number()) << metric << "." << field;
    }
  }
  EXPECT_EQ(json["tpot_ms"]["count"], 2);
  EXPECT_DOUBLE_EQ(json["itl_ms"]["mean"].get<double>(), 35);
  EXPECT_EQ(json["errors"], nlohmann::json::array({"HTTP 400: prompt is too long"}));
}

// Levels 1 and 16 measure MixedRun; level 4 had every request fail, so it has no latencies.
std::vector<SweepPoint> Sweep() {
  return {{.concurrency = 1, .summary = Summarize(MixedRun(), 2.0)},
          {.concurrency = 4, .summary = Summarize({Failed("HTTP 503: busy")}, 1.0)},
          {.concurrency = 16, .summary = Summarize(MixedRun(), 0.5)}};
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(SweepJsonTest, AnArrayOfLevelsWithThroughputsAndPercentiles) {
  const nlohmann::json json = SweepJson(Sweep());
  ASSERT_TRUE(json.is_array());
  ASSERT_EQ(json.size(), 3u);
  EXPECT_EQ(json[0]["concurrency"], 1);
  EXPECT_EQ(json[1]["concurrency"], 4);
  EXPECT_EQ(json[2]["concurrency"], 16);
  EXPECT_DOUBLE_EQ(json[2]["output_throughput"].get<double>(), 34);
  EXPECT_DOUBLE_EQ(json[2]["input_throughput"].get<double>(), 1000);
  EXPECT_DOUBLE_EQ(json[2]["request_throughput"].get<double>(), 6);
  EXPECT_DOUBLE_EQ(json[0]["ttft_ms"]["p50"].get<double>(), 20);
  EXPECT_DOUBLE_EQ(json[0]["ttft_ms"]["p99"].get<double>(), 29.8);
  EXPECT_DOUBLE_EQ(json[0]["tpot_ms"]["p50"].get<double>(), 30);
  EXPECT_DOUBLE_EQ(json[0]["tpot_ms"]["p99"].get<double>(), 49.6);
  EXPECT_DOUBLE_EQ(json[0]["itl_ms"]["p50"].get<double>(), 35);
  EXPECT_EQ(json[1]["failed"], 1);
  EXPECT_EQ(json[1]["ttft_ms"]["count"], 0);
  EXPECT_EQ(json[1]["errors"], nlohmann::json::array({"HTTP 503: busy"}));
}

TEST(SweepReportTest, LineAndTableShowEachLevel) {
  const std::vector<SweepPoint> sweep = Sweep();
  EXPECT_EQ(FormatSweepLine(sweep[2]),
            "concurrency 16: 34.00 output tok/s, 1000.00 input tok/s, 6.00 req/s, TTFT p50/p99 20.00/29.80 ms, "
            "TPOT p50/p99 30.00/49.60 ms, ITL p50/p99 35.00/49.70 ms, 1 of 4 requests failed");
  const std::string table = FormatSweepTable(sweep);
  EXPECT_THAT(table, HasSubstr("concurrency     req/s  out tok/s   in tok/s  TTFT p50"));
  EXPECT_THAT(table, HasSubstr("          1      1.50       8.50     250.00     20.00     29.80     30.00     49.60"));
  EXPECT_THAT(table, HasSubstr("         16      6.00      34.00    1000.00     20.00"));
}

TEST(GnuplotScriptTest, InlineDataAndTwoPanelsOnALogConcurrencyAxis) {
  const std::string script = GnuplotScript(Sweep(), "/tmp/sweep.png", "fake-model: random");
  EXPECT_THAT(script, HasSubstr("set terminal pngcairo"));
  EXPECT_THAT(script, HasSubstr("set output '/tmp/sweep.png'\n"));
  // concurrency, output tok/s, TTFT p50/p99, TPOT p50/p99; the failed level has no latencies.
  EXPECT_THAT(script, HasSubstr("$sweep << EOD\n"
                                "1 8.5 20 29.8 30 49.6\n"
                                "4 0 NaN NaN NaN NaN\n"
                                "16 34 20 29.8 30 49.6\n"
                                "EOD\n"));
  EXPECT_THAT(script, HasSubstr("set multiplot layout 1,2 title 'fake-model: random'\n"));
  EXPECT_THAT(script, HasSubstr("set logscale x 2\n"));
  EXPECT_THAT(script, HasSubstr("set xtics (\"1\" 1, \"4\" 4, \"16\" 16)\n"));
  EXPECT_THAT(script, HasSubstr("plot $sweep using 1:2 with linespoints"));
  EXPECT_THAT(script, HasSubstr("title 'output tok/s'"));
  for (const char* series : {"using 1:3 with linespoints lw 2 pt 7 dt 1 title 'TTFT p50'",
                             "using 1:4 with linespoints lw 2 pt 7 dt 2 title 'TTFT p99'",
                             "using 1:5 with linespoints lw 2 pt 5 dt 1 title 'TPOT p50'",
                             "using 1:6 with linespoints lw 2 pt 5 dt 2 title 'TPOT p99'"}) {
    EXPECT_THAT(script, HasSubstr(series));
  }
  // The two panels, the second on a log latency axis.
  EXPECT_EQ(script.find("\nplot ", script.find("\nplot ") + 1) > script.find("set logscale y"), true);
  EXPECT_THAT(script, HasSubstr("unset multiplot\n"));
}

TEST(GnuplotScriptTest, QuotesTheOutputPathAndTitle) {
  const std::string script = GnuplotScript(Sweep(), "/tmp/it's.png", "a 'quoted'\ntitle");
  EXPECT_THAT(script, HasSubstr("set output '/tmp/it''s.png'\n"));
  EXPECT_THAT(script, HasSubstr("title 'a ''quoted'' title'\n"));
}

TEST(RunGnuplotTest, MissingGnuplotIsNotFoundAndKeepsTheScript) {
  const std::string script_path = ::testing::TempDir() + "/missing.gp";
  const absl::Status status = RunGnuplot("# nothing\n", script_path, "/nonexistent/gnuplot");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("gnuplot-nox"));
  EXPECT_THAT(status.message(), HasSubstr(script_path));
  EXPECT_EQ(ReadFile(script_path), "# nothing\n");
}

// The script must be one gnuplot accepts; where it is installed, draw it.
TEST(RunGnuplotTest, DrawsAPngWhereGnuplotIsInstalled) {
  if (std::system("gnuplot --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "gnuplot is not installed";
  setenv("XDG_CACHE_HOME", ::testing::TempDir().c_str(), 1);  // fontconfig's cache; the sandbox's home is read-only
  const std::string png = ::testing::TempDir() + "/sweep.png";
  const absl::Status status = RunGnuplot(GnuplotScript(Sweep(), png, "fake_model"), png + ".gp");
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadFile(png).substr(0, 4), "\x89PNG");
}

TEST(RunGnuplotTest, FailingScriptIsAnError) {
  if (std::system("gnuplot --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "gnuplot is not installed";
  const absl::Status status = RunGnuplot("this is not gnuplot\n", ::testing::TempDir() + "/bad.gp");
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
}

// Two engine groups' counters, as prometheus-cpp writes them, with a comment
// and an unrelated family that shares a prefix.
constexpr char kMetrics[] = R"(# HELP mlaserve_engine_steps_total Turns of the engine loops
# TYPE mlaserve_engine_steps_total counter
mlaserve_engine_steps_total 100
mlaserve_engine_steps_total{group="1"} 300
mlaserve_engine_step_sequences_total 25600
mlaserve_engine_host_seconds_total 0.05
mlaserve_engine_wait_seconds_total 2
mlaserve_engine_steps_total_extra 7
)";

TEST(EngineCountersTest, SumsEverySeriesOfEachCounter) {
  absl::StatusOr<EngineCounters> counters = ParseEngineCounters(kMetrics);
  ASSERT_TRUE(counters.ok()) << counters.status();
  EXPECT_DOUBLE_EQ(counters->steps, 400);
  EXPECT_DOUBLE_EQ(counters->sequences, 25600);
  EXPECT_DOUBLE_EQ(counters->host_seconds, 0.05);
  EXPECT_DOUBLE_EQ(counters->wait_seconds, 2);
}

TEST(EngineCountersTest, AServerWithoutThemIsNotFound) {
  EXPECT_EQ(ParseEngineCounters("vllm:num_requests_running 3\n").status().code(), absl::StatusCode::kNotFound);
}

TEST(EngineCountersTest, StepsBetweenTwoReadingsArePerStepMeans) {
  const EngineSteps steps = EngineStepsBetween({.steps = 10, .sequences = 100, .host_seconds = 1, .wait_seconds = 1},
                                               {.steps = 210, .sequences = 51300, .host_seconds = 1.1, .wait_seconds = 5});
  EXPECT_EQ(steps.steps, 200);
  EXPECT_DOUBLE_EQ(steps.sequences_per_step, 256);
  EXPECT_NEAR(steps.host_ms_per_step, 0.5, 1e-9);
  EXPECT_NEAR(steps.wait_ms_per_step, 20, 1e-9);
  const nlohmann::json json = ToJson({.engine = steps});
  EXPECT_EQ(json["engine"]["steps"], 200);
  EXPECT_THAT(FormatTable({.engine = steps}), HasSubstr("Host time per step (ms):"));
}

TEST(EngineCountersTest, NoStepsMeanNoDivisionByZero) {
  const EngineSteps steps = EngineStepsBetween({.steps = 5}, {.steps = 5});
  EXPECT_EQ(steps.steps, 0);
  EXPECT_EQ(steps.host_ms_per_step, 0);
}

}  // namespace
}  // namespace mlaserve::bench
