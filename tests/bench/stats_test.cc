#include "tests/bench/stats.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace mlaserve::bench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

RequestResult Succeeded(double ttft_ms, double e2e_ms, std::vector<double> itl_ms, int64_t prompt_tokens,
                        int64_t completion_tokens, int64_t cached_tokens) {
  return {.success = true,
          .ttft_ms = ttft_ms,
          .e2e_ms = e2e_ms,
          .itl_ms = std::move(itl_ms),
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
  EXPECT_DOUBLE_EQ(s.output_throughput, 8.5);
  EXPECT_DOUBLE_EQ(s.total_token_throughput, 258.5);
  EXPECT_DOUBLE_EQ(s.prefix_cache_hit_rate, 0.3);
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
  EXPECT_DOUBLE_EQ(json["output_throughput"].get<double>(), 8.5);
  EXPECT_DOUBLE_EQ(json["total_token_throughput"].get<double>(), 258.5);
  EXPECT_DOUBLE_EQ(json["prefix_cache_hit_rate"].get<double>(), 0.3);
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

}  // namespace
}  // namespace mlaserve::bench
