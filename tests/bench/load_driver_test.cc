#include "tests/bench/load_driver.h"

#include <algorithm>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/bench/stats.h"
#include "tests/bench/workload.h"

namespace mlaserve::bench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kModel[] = "fake-model";

// An OpenAI-compatible server that streams a chunk per output token, the last
// with the finish reason, then the usage chunk and [DONE], as mlaserve's
// coordinator does; like it, it drops a token's chunk whose text and logprobs
// are both empty, unless it is the last. It reports as cached the longest
// prefix a prompt shares with any earlier one, as a prefix cache would,
// tracks how many requests it serves at once, and keeps the request bodies.
class FakeServer {
 public:
  struct Options {
    // Hold requests until this many are in flight (only until it first happens),
    // so a test can see whether the driver reaches its concurrency.
    int64_t gate = 0;
    size_t max_prompt_len = std::numeric_limits<size_t>::max();  // longer prompts get a 400
    bool send_done = true;                                       // end streams with data: [DONE]
    absl::Duration token_gap = absl::Milliseconds(1);
    // Every token's text: "" stands for a random-weights model, whose ids
    // detokenize to nothing.
    std::string token_text = "t";
  };

  explicit FakeServer(Options options) : options_(options) {
    server_.new_task_queue = [] { return new httplib::ThreadPool(64); };
    server_.Get("/v1/models", [](const httplib::Request&, httplib::Response& res) {
      const nlohmann::json models = {{"object", "list"},
                                     {"data", {{{"id", kModel}, {"max_model_len", 4096}, {"vocab_size", 32000}}}}};
      res.set_content(models.dump(), "application/json");
    });
    server_.Post("/v1/completions",
                 [this](const httplib::Request& req, httplib::Response& res) { HandleCompletion(req, res); });
    port_ = server_.bind_to_any_port("127.0.0.1");
    listener_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) absl::SleepFor(absl::Milliseconds(1));
  }

  ~FakeServer() {
    server_.stop();
    listener_.join();
  }

  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }

  int64_t max_in_flight() {
    absl::MutexLock lock(&mu_);
    return max_in_flight_;
  }

  int64_t requests_admitted() {
    absl::MutexLock lock(&mu_);
    return static_cast<int64_t>(prompts_.size());
  }

  // The bodies of the completion requests admitted, in arrival order.
  std::vector<nlohmann::json> bodies() {
    absl::MutexLock lock(&mu_);
    return bodies_;
  }

 private:
  // What is wrong with a request body, or "" if it asks for what the benchmark must.
  static std::string ProblemWith(const nlohmann::json& body) {
    if (!body.is_object()) return "the body is not a JSON object";
    if (body.value("model", "") != kModel) return "unknown model";
    if (!body.contains("prompt") || !body["prompt"].is_array() || body["prompt"].empty()) return "no token prompt";
    for (const nlohmann::json& id : body["prompt"]) {
      if (!id.is_number_integer()) return "a prompt token is not an integer";
    }
    if (!body.contains("max_tokens") || !body["max_tokens"].is_number_integer()) return "no max_tokens";
    if (body.contains("ignore_eos") && !body["ignore_eos"].is_boolean()) return "ignore_eos is not a boolean";
    if (body.contains("logprobs") && !(body["logprobs"].is_number_integer() && body["logprobs"] >= 0)) {
      return "logprobs is not a count";
    }
    if (body.value("stream", false) != true) return "stream is not set";
    if (!body.contains("stream_options") || body["stream_options"].value("include_usage", false) != true) {
      return "stream_options.include_usage is not set";
    }
    return "";
  }

  static void Reject(httplib::Response& res, const std::string& message) {
    const nlohmann::json error = {
        {"error", {{"message", message}, {"type", "BadRequestError"}, {"param", nullptr}, {"code", 400}}}};
    res.status = 400;
    res.set_content(error.dump(), "application/json");
  }

  // Splits every event in two writes, so the client must reassemble it.
  static bool WriteEvent(httplib::DataSink& sink, const std::string& data) {
    const std::string event = absl::StrCat("data: ", data, "\n\n");
    const size_t half = event.size() / 2;
    if (!sink.write(event.data(), half)) return false;
    absl::SleepFor(absl::Microseconds(300));
    return sink.write(event.data() + half, event.size() - half);
  }

  static nlohmann::json Chunk(const std::string& text, const nlohmann::json& logprobs,
                              const nlohmann::json& finish_reason) {
    return {{"id", "cmpl-fake"},
            {"object", "text_completion"},
            {"model", kModel},
            {"choices", {{{"index", 0}, {"text", text}, {"logprobs", logprobs}, {"finish_reason", finish_reason}}}},
            {"usage", nullptr}};
  }

  // A completions chunk's logprobs for one token at character `offset`.
  static nlohmann::json TokenLogprobs(const std::string& text, int64_t offset) {
    return {{"tokens", {text}},
            {"token_logprobs", {-1.5}},
            {"top_logprobs", {{{text, -1.5}}}},
            {"text_offset", {offset}}};
  }

  static nlohmann::json UsageChunk(int64_t prompt_tokens, int64_t completion_tokens, int64_t cached_tokens) {
    return {{"id", "cmpl-fake"},
            {"object", "text_completion"},
            {"model", kModel},
            {"choices", nlohmann::json::array()},
            {"usage",
             {{"prompt_tokens", prompt_tokens},
              {"completion_tokens", completion_tokens},
              {"total_tokens", prompt_tokens + completion_tokens},
              {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}}}};
  }

  void HandleCompletion(const httplib::Request& req, httplib::Response& res) {
    const nlohmann::json body = nlohmann::json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (const std::string problem = ProblemWith(body); !problem.empty()) {
      Reject(res, problem);
      return;
    }
    const std::vector<int32_t> prompt = body["prompt"].get<std::vector<int32_t>>();
    if (prompt.size() > options_.max_prompt_len) {
      Reject(res, "prompt is too long");
      return;
    }
    const int64_t cached = Admit(prompt, body);
    const int64_t max_tokens = body["max_tokens"];
    const bool logprobs = body.contains("logprobs");
    const int64_t prompt_tokens = static_cast<int64_t>(prompt.size());
    res.set_chunked_content_provider("text/event-stream", [=, this](size_t, httplib::DataSink& sink) {
      const std::string& text = options_.token_text;
      bool ok = true;
      for (int64_t i = 0; ok && i < max_tokens; ++i) {
        const bool last = i + 1 == max_tokens;
        if (last || !text.empty() || logprobs) {
          const nlohmann::json token_logprobs = logprobs ? TokenLogprobs(text, i * text.size()) : nlohmann::json();
          ok = WriteEvent(sink, Chunk(text, token_logprobs, last ? nlohmann::json("length") : nullptr).dump());
        }
        if (!last) absl::SleepFor(options_.token_gap);
      }
      ok = ok && WriteEvent(sink, UsageChunk(prompt_tokens, max_tokens, cached).dump());
      // Before [DONE]: once the client has it, it may send its next request.
      Leave();
      if (ok && options_.send_done) ok = WriteEvent(sink, "[DONE]");
      sink.done();
      return ok;
    });
  }

  // Counts the request in flight, waits at the gate, and returns its cached tokens.
  int64_t Admit(const std::vector<int32_t>& prompt, const nlohmann::json& body) {
    absl::MutexLock lock(&mu_);
    bodies_.push_back(body);
    ++in_flight_;
    max_in_flight_ = std::max(max_in_flight_, in_flight_);
    if (in_flight_ >= options_.gate) gate_open_ = true;
    int64_t cached = 0;
    for (const std::vector<int32_t>& earlier : prompts_) {
      const auto mismatch = std::mismatch(prompt.begin(), prompt.end(), earlier.begin(), earlier.end());
      cached = std::max<int64_t>(cached, mismatch.first - prompt.begin());
    }
    prompts_.push_back(prompt);
    mu_.AwaitWithTimeout(absl::Condition(&gate_open_), absl::Seconds(20));
    return cached;
  }

  void Leave() {
    absl::MutexLock lock(&mu_);
    --in_flight_;
  }

  const Options options_;
  httplib::Server server_;
  int port_ = 0;
  std::thread listener_;
  absl::Mutex mu_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t max_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool gate_open_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::vector<int32_t>> prompts_ ABSL_GUARDED_BY(mu_);
  std::vector<nlohmann::json> bodies_ ABSL_GUARDED_BY(mu_);
};

std::vector<Session> RandomWorkload(int64_t num_requests, int64_t input_len, int64_t output_len) {
  absl::StatusOr<std::vector<Session>> sessions = GenerateWorkload({.kind = WorkloadKind::kRandom,
                                                                    .num_requests = num_requests,
                                                                    .input_len = input_len,
                                                                    .output_len = output_len,
                                                                    .vocab_low = 10,
                                                                    .vocab_high = 1000,
                                                                    .seed = 7});
  EXPECT_TRUE(sessions.ok()) << sessions.status();
  return sessions.value_or(std::vector<Session>{});
}

LoadOptions Options(const FakeServer& server) { return {.url = server.url(), .model = kModel}; }

// The fake streams one chunk per token, so a request has max_tokens - 1 gaps.
void ExpectMeasured(const RequestResult& result, const BenchRequest& request) {
  ASSERT_TRUE(result.success) << result.error;
  EXPECT_EQ(result.prompt_tokens, static_cast<int64_t>(request.prompt.size()));
  EXPECT_EQ(result.completion_tokens, request.max_tokens);
  EXPECT_EQ(result.itl_ms.size(), static_cast<size_t>(request.max_tokens - 1));
  EXPECT_EQ(result.choice_events, request.max_tokens);
  EXPECT_GT(result.ttft_ms, 0);
  EXPECT_LT(result.ttft_ms, result.e2e_ms);
}

void ExpectAllMeasured(const LoadResult& load, const std::vector<Session>& sessions) {
  ASSERT_EQ(load.requests.size(), static_cast<size_t>(CountRequests(sessions)));
  size_t i = 0;
  for (const Session& session : sessions) {
    for (const BenchRequest& request : session.turns) ExpectMeasured(load.requests[i++], request);
  }
  EXPECT_GT(load.duration_s, 0);
}

TEST(FetchModelInfoTest, FirstListedModelByDefault) {
  FakeServer server({});
  absl::StatusOr<ModelInfo> model = FetchModelInfo(server.url(), "");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->id, kModel);
  EXPECT_EQ(model->max_model_len, 4096);
  EXPECT_EQ(model->vocab_size, 32000);
}

TEST(FetchModelInfoTest, UnlistedModelIsNotFound) {
  FakeServer server({});
  absl::StatusOr<ModelInfo> model = FetchModelInfo(server.url(), "other-model");
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(model.status().message(), HasSubstr(kModel));
}

TEST(RunLoadTest, ClosedLoopKeepsExactlyItsConcurrencyInFlight) {
  FakeServer server({.gate = 3});
  const std::vector<Session> sessions = RandomWorkload(12, 8, 6);
  LoadOptions options = Options(server);
  options.concurrency = 3;
  absl::StatusOr<LoadResult> load = RunLoad(sessions, options);
  ASSERT_TRUE(load.ok()) << load.status();
  ExpectAllMeasured(*load, sessions);
  EXPECT_EQ(server.requests_admitted(), 12);
  EXPECT_EQ(server.max_in_flight(), 3);
}

TEST(RunLoadTest, OpenLoopAtInfiniteRateSendsEverythingAtOnce) {
  FakeServer server({.gate = 6});
  const std::vector<Session> sessions = RandomWorkload(6, 8, 4);
  absl::StatusOr<LoadResult> load = RunLoad(sessions, Options(server));
  ASSERT_TRUE(load.ok()) << load.status();
  ExpectAllMeasured(*load, sessions);
  EXPECT_EQ(server.max_in_flight(), 6);
}

TEST(RunLoadTest, OpenLoopWithPoissonArrivalsReportsProgress) {
  FakeServer server({});
  const std::vector<Session> sessions = RandomWorkload(10, 8, 4);
  LoadOptions options = Options(server);
  options.request_rate = 200;
  std::vector<std::pair<int64_t, int64_t>> progress;  // calls are serialized by the driver
  options.on_request_done = [&progress](int64_t done, int64_t total) { progress.emplace_back(done, total); };
  absl::StatusOr<LoadResult> load = RunLoad(sessions, options);
  ASSERT_TRUE(load.ok()) << load.status();
  ExpectAllMeasured(*load, sessions);
  ASSERT_EQ(progress.size(), 10u);
  for (size_t i = 0; i < progress.size(); ++i) EXPECT_EQ(progress[i], std::make_pair(int64_t(i + 1), int64_t{10}));
}

TEST(RunLoadTest, MultiTurnTurnsRunInOrderAndHitTheCache) {
  FakeServer server({});
  absl::StatusOr<std::vector<Session>> sessions = GenerateWorkload({.kind = WorkloadKind::kMultiTurn,
                                                                    .input_len = 5,
                                                                    .output_len = 3,
                                                                    .num_turns = 3,
                                                                    .num_conversations = 4,
                                                                    .vocab_low = 10,
                                                                    .vocab_high = 1000,
                                                                    .seed = 3});
  ASSERT_TRUE(sessions.ok()) << sessions.status();
  absl::StatusOr<LoadResult> load = RunLoad(*sessions, Options(server));
  ASSERT_TRUE(load.ok()) << load.status();
  ExpectAllMeasured(*load, *sessions);

  size_t i = 0;
  int64_t cached = 0;
  for (const Session& conversation : *sessions) {
    ASSERT_EQ(conversation.turns.size(), 3u);
    for (size_t turn = 0; turn < conversation.turns.size(); ++turn, ++i) {
      cached += load->requests[i].cached_tokens;
      if (turn == 0) continue;
      const BenchRequest& previous = conversation.turns[turn - 1];
      const BenchRequest& current = conversation.turns[turn];
      ASSERT_EQ(current.prompt.size(), previous.prompt.size() + previous.max_tokens + 5);
      EXPECT_TRUE(std::equal(previous.prompt.begin(), previous.prompt.end(), current.prompt.begin()));
      // The previous turn had reached the server: its whole prompt is this turn's cached prefix.
      EXPECT_EQ(load->requests[i].cached_tokens, static_cast<int64_t>(previous.prompt.size()));
    }
  }
  const BenchmarkSummary summary = Summarize(load->requests, load->duration_s);
  EXPECT_EQ(summary.cached_tokens, cached);
  EXPECT_GT(summary.prefix_cache_hit_rate, 0);
}

TEST(RunLoadTest, RejectedRequestsFailWithTheServersMessage) {
  FakeServer server({.max_prompt_len = 16});
  const std::vector<Session> sessions = {{{{std::vector<int32_t>(4, 11), 3}}},
                                         {{{std::vector<int32_t>(32, 11), 3}}},
                                         {{{std::vector<int32_t>(4, 12), 3}}},
                                         {{{std::vector<int32_t>(32, 12), 3}}}};
  LoadOptions options = Options(server);
  options.concurrency = 2;
  absl::StatusOr<LoadResult> load = RunLoad(sessions, options);
  ASSERT_TRUE(load.ok()) << load.status();
  ASSERT_EQ(load->requests.size(), 4u);
  ExpectMeasured(load->requests[0], sessions[0].turns[0]);
  ExpectMeasured(load->requests[2], sessions[2].turns[0]);
  for (size_t i : {1, 3}) {
    EXPECT_FALSE(load->requests[i].success);
    EXPECT_EQ(load->requests[i].error, "HTTP 400: prompt is too long");
  }
  const BenchmarkSummary summary = Summarize(load->requests, load->duration_s);
  EXPECT_EQ(summary.completed, 2);
  EXPECT_EQ(summary.failed, 2);
}

TEST(RunLoadTest, StreamWithoutDoneFails) {
  FakeServer server({.send_done = false});
  const std::vector<Session> sessions = RandomWorkload(2, 4, 3);
  absl::StatusOr<LoadResult> load = RunLoad(sessions, Options(server));
  ASSERT_TRUE(load.ok()) << load.status();
  for (const RequestResult& result : load->requests) {
    EXPECT_FALSE(result.success);
    EXPECT_THAT(result.error, HasSubstr("[DONE]"));
  }
}

TEST(RunLoadTest, SlowStreamTimesOut) {
  FakeServer server({.token_gap = absl::Milliseconds(300)});
  const std::vector<Session> sessions = RandomWorkload(1, 4, 3);
  LoadOptions options = Options(server);
  options.timeout = absl::Milliseconds(100);
  absl::StatusOr<LoadResult> load = RunLoad(sessions, options);
  ASSERT_TRUE(load.ok()) << load.status();
  ASSERT_EQ(load->requests.size(), 1u);
  EXPECT_FALSE(load->requests[0].success);
  EXPECT_THAT(load->requests[0].error, HasSubstr("timed out"));
}

TEST(RunLoadTest, AsksForUsageAndIgnoreEosButNotLogprobsByDefault) {
  FakeServer server({});
  ASSERT_TRUE(RunLoad(RandomWorkload(1, 4, 2), Options(server)).ok());
  LoadOptions options = Options(server);
  options.ignore_eos = false;
  ASSERT_TRUE(RunLoad(RandomWorkload(1, 4, 2), options).ok());
  const std::vector<nlohmann::json> bodies = server.bodies();
  ASSERT_EQ(bodies.size(), 2u);
  EXPECT_EQ(bodies[0].value("ignore_eos", false), true);
  EXPECT_EQ(bodies[0]["stream_options"]["include_usage"], true);
  EXPECT_FALSE(bodies[0].contains("logprobs"));
  EXPECT_FALSE(bodies[1].contains("ignore_eos"));
}

// A random-weights model: every token's text is empty, so the server streams
// only the last token's chunk. The request still succeeds, its tokens counted
// from usage, its TTFT at that one chunk.
TEST(RunLoadTest, TokensWithoutTextAreCountedFromUsage) {
  FakeServer server({.token_text = ""});
  const std::vector<Session> sessions = RandomWorkload(3, 8, 5);
  absl::StatusOr<LoadResult> load = RunLoad(sessions, Options(server));
  ASSERT_TRUE(load.ok()) << load.status();
  ASSERT_EQ(load->requests.size(), 3u);
  int64_t output_tokens = 0;
  for (size_t i = 0; i < 3; ++i) {
    const RequestResult& result = load->requests[i];
    const BenchRequest& request = sessions[i].turns[0];
    ASSERT_TRUE(result.success) << result.error;
    EXPECT_EQ(result.completion_tokens, request.max_tokens);
    EXPECT_EQ(result.prompt_tokens, static_cast<int64_t>(request.prompt.size()));
    EXPECT_TRUE(result.itl_ms.empty());
    EXPECT_EQ(result.choice_events, 1);
    EXPECT_GT(result.ttft_ms, 0);
    EXPECT_LE(result.ttft_ms, result.e2e_ms);
    output_tokens += request.max_tokens;
  }
  const BenchmarkSummary summary = Summarize(load->requests, load->duration_s);
  EXPECT_EQ(summary.completed, 3);
  EXPECT_EQ(summary.output_tokens, output_tokens);
  EXPECT_GT(summary.output_throughput, 0);
  EXPECT_GT(summary.input_throughput, 0);
  EXPECT_EQ(summary.tpot_ms.count, 3);
  EXPECT_EQ(summary.requests_missing_token_events, 3);
}

// With logprobs asked for, every empty-text token has its chunk: each is timed.
TEST(RunLoadTest, LogprobsTimeEveryTokenWithoutText) {
  FakeServer server({.token_text = ""});
  const std::vector<Session> sessions = RandomWorkload(3, 8, 5);
  LoadOptions options = Options(server);
  options.logprobs = 0;
  absl::StatusOr<LoadResult> load = RunLoad(sessions, options);
  ASSERT_TRUE(load.ok()) << load.status();
  ExpectAllMeasured(*load, sessions);
  EXPECT_EQ(Summarize(load->requests, load->duration_s).requests_missing_token_events, 0);
  for (const nlohmann::json& body : server.bodies()) EXPECT_EQ(body.value("logprobs", -1), 0);
}

TEST(ParseConcurrencyListTest, PositiveIntegersInOrder) {
  absl::StatusOr<std::vector<int64_t>> levels = ParseConcurrencyList("1,16,64,256");
  ASSERT_TRUE(levels.ok()) << levels.status();
  EXPECT_THAT(*levels, ElementsAre(1, 16, 64, 256));
  for (const char* bad : {"", "0", "4,x", "-1", "1,,2", "2.5"}) {
    EXPECT_EQ(ParseConcurrencyList(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(RunSweepTest, RunsEachLevelClosedLoopInOrder) {
  FakeServer server({});
  const std::vector<SweepLevel> levels = {{.concurrency = 1, .sessions = RandomWorkload(3, 8, 4)},
                                          {.concurrency = 4, .sessions = RandomWorkload(8, 6, 3)}};
  std::vector<int64_t> reported;
  absl::StatusOr<std::vector<SweepPoint>> points = RunSweep(
      levels, Options(server), [&reported](const SweepPoint& point) { reported.push_back(point.concurrency); });
  ASSERT_TRUE(points.ok()) << points.status();
  EXPECT_THAT(reported, ElementsAre(1, 4));
  ASSERT_EQ(points->size(), 2u);
  EXPECT_EQ(server.requests_admitted(), 11);
  EXPECT_LE(server.max_in_flight(), 4);
  for (size_t i = 0; i < 2; ++i) {
    const BenchmarkSummary& s = (*points)[i].summary;
    EXPECT_EQ((*points)[i].concurrency, levels[i].concurrency);
    EXPECT_EQ(s.completed, static_cast<int64_t>(levels[i].sessions.size()));
    EXPECT_EQ(s.failed, 0);
    int64_t output_tokens = 0;
    for (const Session& session : levels[i].sessions) output_tokens += session.turns[0].max_tokens;
    EXPECT_EQ(s.output_tokens, output_tokens);
  }
}

// What --json_out gets from a sweep: an array with an object per level.
TEST(RunSweepTest, JsonHasALevelPerConcurrency) {
  FakeServer server({});
  const std::vector<SweepLevel> levels = {{.concurrency = 2, .sessions = RandomWorkload(4, 8, 4)},
                                          {.concurrency = 1, .sessions = RandomWorkload(2, 8, 4)}};
  absl::StatusOr<std::vector<SweepPoint>> points = RunSweep(levels, Options(server));
  ASSERT_TRUE(points.ok()) << points.status();
  const nlohmann::json json = SweepJson(*points);
  ASSERT_TRUE(json.is_array());
  ASSERT_EQ(json.size(), 2u);
  EXPECT_EQ(json[0]["concurrency"], 2);
  EXPECT_EQ(json[1]["concurrency"], 1);
  for (const nlohmann::json& level : json) {
    for (const char* rate : {"output_throughput", "input_throughput", "request_throughput"}) {
      ASSERT_TRUE(level[rate].is_number()) << rate;
      EXPECT_GT(level[rate].get<double>(), 0) << rate;
    }
    for (const char* metric : {"ttft_ms", "tpot_ms", "itl_ms"}) {
      for (const char* field : {"p50", "p99"}) {
        ASSERT_TRUE(level[metric][field].is_number()) << metric << "." << field;
        EXPECT_GT(level[metric][field].get<double>(), 0) << metric << "." << field;
      }
    }
  }
}

TEST(RunSweepTest, RejectsANonPositiveLevel) {
  FakeServer server({});
  const std::vector<SweepLevel> levels = {{.concurrency = 0, .sessions = RandomWorkload(1, 4, 2)}};
  EXPECT_EQ(RunSweep(levels, Options(server)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server.requests_admitted(), 0);
}

TEST(RunLoadTest, RejectsUnusableOptions) {
  LoadOptions options = {.url = "http://127.0.0.1:1", .model = kModel, .request_rate = 0};
  EXPECT_EQ(RunLoad({}, options).status().code(), absl::StatusCode::kInvalidArgument);
  options.request_rate = 1;
  options.concurrency = -1;
  EXPECT_EQ(RunLoad({}, options).status().code(), absl::StatusCode::kInvalidArgument);
  options.concurrency = 1;
  options.logprobs = -2;
  EXPECT_EQ(RunLoad({}, options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mlaserve::bench
