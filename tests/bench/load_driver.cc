#include "tests/bench/load_driver.h"

#include <chrono>
#include <cmath>
#include <deque>
#include <optional>
#include <random>
#include <thread>

#include <httplib.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace mlaserve::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Past this many sessions in flight an open loop queues arrivals rather than
// start threads without bound against a server that has stalled.
constexpr size_t kMaxOpenLoopSessions = 2048;
constexpr size_t kMaxQuotedBody = 300;

double Milliseconds(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// OpenAI's {"error": {"message": ...}}, else `fallback`.
std::string ErrorMessage(const nlohmann::json& body, const std::string& fallback) {
  if (!body.is_object() || !body.contains("error")) return fallback;
  const nlohmann::json& error = body["error"];
  if (error.is_object() && error.contains("message") && error["message"].is_string()) {
    return error["message"].get<std::string>();
  }
  return error.is_string() ? error.get<std::string>() : fallback;
}

std::string ErrorMessage(const std::string& body) {
  return ErrorMessage(nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false), body.substr(0, kMaxQuotedBody));
}

// The streamed events of one completion, consumed as they arrive: events
// with a choice time the request, the closing usage chunk counts its tokens.
//
// Which events are timed: every event whose "choices" is not empty, its text
// empty or not, as a random-weights model's tokens often detokenize to
// nothing. mlaserve sends one such event per token, except that it drops a
// token's event when both its text and its logprobs are empty (the token then
// reaches the client with a later event; the last token's event always
// comes). So TTFT is to the first event with a choice, ITL the gaps between
// such events; where tokens had no event, a gap spans several tokens and TTFT
// may be late (and TPOT, (e2e - TTFT) / (tokens - 1), low with it), unless the
// request asks for logprobs (LoadOptions::logprobs). The token counts, from
// usage, hold either way.
class CompletionStream {
 public:
  CompletionStream(Clock::time_point start, RequestResult& result) : start_(start), result_(result) {}

  // False once the stream has failed, to stop the transfer.
  bool Consume(absl::string_view bytes, Clock::time_point now) {
    pending_.append(bytes.data(), bytes.size());
    size_t line_start = 0;
    size_t newline = pending_.find('\n');
    while (status_.ok() && newline != std::string::npos) {
      ConsumeLine(absl::string_view(pending_).substr(line_start, newline - line_start), now);
      line_start = newline + 1;
      newline = pending_.find('\n', line_start);
    }
    pending_.erase(0, line_start);
    return status_.ok();
  }

  // The stream's verdict once its body has ended.
  absl::Status Finish(Clock::time_point now) {
    if (status_.ok() && !pending_.empty()) ConsumeLine(pending_, now);
    if (status_.ok()) DispatchEvent(now);
    if (!status_.ok()) return status_;
    if (!done_) return absl::DataLossError("the stream ended before data: [DONE]");
    if (!has_usage_) return absl::DataLossError("the stream had no usage chunk (stream_options.include_usage)");
    if (!last_choice_) return absl::DataLossError("the stream carried no choice");
    return absl::OkStatus();
  }

 private:
  // Server-sent events: "data:" lines accumulate until a blank line ends the event.
  void ConsumeLine(absl::string_view line, Clock::time_point now) {
    absl::ConsumeSuffix(&line, "\r");
    if (line.empty()) {
      DispatchEvent(now);
      return;
    }
    if (!absl::ConsumePrefix(&line, "data:")) return;  // comments and other fields
    absl::ConsumePrefix(&line, " ");
    if (data_) {
      data_->push_back('\n');
    } else {
      data_.emplace();
    }
    data_->append(line.data(), line.size());
  }

  void DispatchEvent(Clock::time_point now) {
    if (!data_) return;
    status_ = HandleData(*data_, now);
    data_.reset();
  }

  absl::Status HandleData(const std::string& data, Clock::time_point now) {
    if (done_) return absl::DataLossError("an event followed data: [DONE]");
    if (data == "[DONE]") {
      done_ = true;
      return absl::OkStatus();
    }
    try {
      return HandleChunk(nlohmann::json::parse(data), now);
    } catch (const nlohmann::json::exception& e) {
      return absl::DataLossError(
          absl::StrCat("malformed stream event (", e.what(), "): ", data.substr(0, kMaxQuotedBody)));
    }
  }

  // Throws nlohmann::json::exception for chunks of the wrong shape.
  absl::Status HandleChunk(const nlohmann::json& chunk, Clock::time_point now) {
    if (chunk.contains("error")) {
      return absl::InternalError(absl::StrCat("error in the stream: ", ErrorMessage(chunk, chunk.dump())));
    }
    // A choice is a token arrival whatever its text; usage chunks have none.
    if (!chunk.at("choices").empty()) OnChoice(now);
    if (chunk.contains("usage") && !chunk["usage"].is_null()) ReadUsage(chunk["usage"]);
    return absl::OkStatus();
  }

  void OnChoice(Clock::time_point now) {
    ++result_.choice_events;
    if (last_choice_) {
      result_.itl_ms.push_back(Milliseconds(now - *last_choice_));
    } else {
      result_.ttft_ms = Milliseconds(now - start_);
    }
    last_choice_ = now;
  }

  void ReadUsage(const nlohmann::json& usage) {
    result_.prompt_tokens = usage.at("prompt_tokens").get<int64_t>();
    result_.completion_tokens = usage.at("completion_tokens").get<int64_t>();
    const nlohmann::json details = usage.value("prompt_tokens_details", nlohmann::json());
    if (details.is_object() && details.contains("cached_tokens") && !details["cached_tokens"].is_null()) {
      result_.cached_tokens = details["cached_tokens"].get<int64_t>();
    }
    has_usage_ = true;
  }

  const Clock::time_point start_;
  RequestResult& result_;
  std::string pending_;              // bytes after the last complete line
  std::optional<std::string> data_;  // the current event's data, once it has some
  std::optional<Clock::time_point> last_choice_;
  bool done_ = false;
  bool has_usage_ = false;
  absl::Status status_;
};

// The prompt goes as token ids, which the completions API takes as they are,
// so its length is exact whatever the tokenizer.
nlohmann::json CompletionBody(const LoadOptions& options, const BenchRequest& request) {
  nlohmann::json body = {{"model", options.model},
                         {"prompt", request.prompt},
                         {"max_tokens", request.max_tokens},
                         {"temperature", 0.0},
                         {"stream", true},
                         {"stream_options", {{"include_usage", true}}}};
  if (options.ignore_eos) body["ignore_eos"] = true;
  if (options.logprobs >= 0) body["logprobs"] = options.logprobs;
  return body;
}

httplib::Request CompletionRequest(const LoadOptions& options, const BenchRequest& request) {
  httplib::Request http;
  http.method = "POST";
  http.path = "/v1/completions";
  http.headers = {{"Content-Type", "application/json"}, {"Accept", "text/event-stream"}};
  http.body = CompletionBody(options, request).dump();
  return http;
}

// What one exchange saw besides its stream's events.
struct Transfer {
  bool sent = false;  // the response arrived whole
  httplib::Error error = httplib::Error::Success;
  int http_status = 0;     // 0 until the response's headers arrive
  std::string error_body;  // of a response other than 200
  bool past_deadline = false;
};

absl::Status Verdict(const Transfer& transfer, absl::Duration timeout, CompletionStream& stream,
                     Clock::time_point end) {
  if (transfer.past_deadline) {
    return absl::DeadlineExceededError(absl::StrCat("timed out after ", absl::FormatDuration(timeout)));
  }
  if (transfer.http_status != 0 && transfer.http_status != 200) {
    return absl::UnavailableError(absl::StrCat("HTTP ", transfer.http_status, ": ", ErrorMessage(transfer.error_body)));
  }
  // Canceled is the stream's own doing, which it reports better.
  if (!transfer.sent && transfer.error != httplib::Error::Canceled) {
    return absl::UnavailableError(absl::StrCat("request failed: ", httplib::to_string(transfer.error)));
  }
  return stream.Finish(end);
}

// Sends `request` and times its stream. Never fails: failures are recorded.
RequestResult SendCompletion(const LoadOptions& options, const BenchRequest& request) {
  RequestResult result;
  const auto timeout = absl::ToChronoMicroseconds(options.timeout);
  httplib::Client client(options.url);
  client.set_connection_timeout(timeout);
  client.set_write_timeout(timeout);
  client.set_read_timeout(timeout);  // bounds each wait for bytes; `deadline` bounds the whole request

  httplib::Request http = CompletionRequest(options, request);
  Transfer transfer;
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + timeout;
  CompletionStream stream(start, result);
  http.response_handler = [&](const httplib::Response& response) {
    transfer.http_status = response.status;
    return true;
  };
  http.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    const Clock::time_point now = Clock::now();
    if (now > deadline) return false;
    if (transfer.http_status != 200) {
      transfer.error_body.append(data, size);
      return true;
    }
    return stream.Consume(absl::string_view(data, size), now);
  };
  httplib::Response response;
  transfer.sent = client.send(http, response, transfer.error);
  const Clock::time_point end = Clock::now();
  transfer.past_deadline = !transfer.sent && end > deadline;
  result.e2e_ms = Milliseconds(end - start);

  const absl::Status status = Verdict(transfer, options.timeout, stream, end);
  result.success = status.ok();
  result.error = std::string(status.message());
  return result;
}

// Runs sessions on at most `max_threads` threads, starting one only when no
// idle thread can take the work, so an open loop's threads track its load.
class SessionPool {
 public:
  SessionPool(size_t max_threads, std::function<void(size_t)> run) : max_threads_(max_threads), run_(std::move(run)) {}
  ~SessionPool() { Close(); }

  // Only one thread submits.
  void Submit(size_t session) {
    bool start_thread;
    {
      absl::MutexLock lock(&mu_);
      queue_.push_back(session);
      start_thread = queue_.size() > idle_ && threads_.size() < max_threads_;
    }
    if (start_thread) threads_.emplace_back([this] { Work(); });
  }

  // Runs what was submitted to its end.
  void Close() {
    {
      absl::MutexLock lock(&mu_);
      closed_ = true;
    }
    for (std::thread& thread : threads_) thread.join();
    threads_.clear();
  }

 private:
  void Work() {
    while (true) {
      size_t session;
      {
        absl::MutexLock lock(&mu_);
        ++idle_;
        mu_.Await(absl::Condition(this, &SessionPool::HasWorkOrClosed));
        --idle_;
        if (queue_.empty()) return;
        session = queue_.front();
        queue_.pop_front();
      }
      run_(session);
    }
  }

  bool HasWorkOrClosed() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return closed_ || !queue_.empty(); }

  const size_t max_threads_;
  const std::function<void(size_t)> run_;
  std::vector<std::thread> threads_;  // the submitting thread's alone
  absl::Mutex mu_;
  std::deque<size_t> queue_ ABSL_GUARDED_BY(mu_);
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// Submits sessions at Poisson arrival times, or all at once for an infinite rate.
void DispatchOpenLoop(size_t num_sessions, const LoadOptions& options, SessionPool& pool) {
  std::mt19937_64 engine(options.seed);
  Clock::time_point arrival = Clock::now();
  for (size_t s = 0; s < num_sessions; ++s) {
    if (s > 0 && std::isfinite(options.request_rate)) {
      const double gap_s = std::exponential_distribution<double>(options.request_rate)(engine);
      arrival += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap_s));
      std::this_thread::sleep_until(arrival);
    }
    pool.Submit(s);
  }
}

absl::Status Validate(const LoadOptions& options) {
  if (!httplib::Client(options.url).is_valid()) return absl::InvalidArgumentError("unusable url " + options.url);
  if (options.concurrency < 0) return absl::InvalidArgumentError("--concurrency must not be negative");
  if (options.concurrency == 0 && !(options.request_rate > 0)) {
    return absl::InvalidArgumentError("--request_rate must be positive (inf: all at once)");
  }
  if (options.timeout <= absl::ZeroDuration()) return absl::InvalidArgumentError("--timeout_s must be positive");
  if (options.logprobs < -1) return absl::InvalidArgumentError("--logprobs must be -1 (none) or at least 0");
  return absl::OkStatus();
}

int64_t JsonInt(const nlohmann::json& object, const char* key) {
  return object.contains(key) && object[key].is_number_integer() ? object[key].get<int64_t>() : 0;
}

absl::StatusOr<ModelInfo> FindModel(const nlohmann::json& listing, const std::string& model) {
  std::vector<std::string> ids;
  for (const nlohmann::json& entry : listing.at("data")) {
    const std::string id = entry.at("id");
    if (model.empty() || id == model) {
      return ModelInfo{
          .id = id, .max_model_len = JsonInt(entry, "max_model_len"), .vocab_size = JsonInt(entry, "vocab_size")};
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::NotFoundError("/v1/models lists no models");
  return absl::NotFoundError(
      absl::StrCat("model '", model, "' is not served; /v1/models lists ", absl::StrJoin(ids, ", ")));
}

// The server's engine counters; nullopt when it has none to tell (another
// server) or /metrics cannot be read: the run goes on without them.
std::optional<EngineCounters> ScrapeEngineCounters(const std::string& url) {
  httplib::Client client(url);
  client.set_read_timeout(10, 0);
  httplib::Result response = client.Get("/metrics");
  if (!response || response->status != 200) return std::nullopt;
  absl::StatusOr<EngineCounters> counters = ParseEngineCounters(response->body);
  if (!counters.ok()) return std::nullopt;
  return *counters;
}

}  // namespace

absl::StatusOr<ModelInfo> FetchModelInfo(const std::string& url, const std::string& model) {
  httplib::Client client(url);
  if (!client.is_valid()) return absl::InvalidArgumentError("unusable url " + url);
  client.set_connection_timeout(std::chrono::seconds(10));
  client.set_read_timeout(std::chrono::seconds(30));
  httplib::Result response = client.Get("/v1/models");
  if (!response) {
    return absl::UnavailableError(absl::StrCat("cannot reach ", url, ": ", httplib::to_string(response.error())));
  }
  if (response->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("GET /v1/models: HTTP ", response->status, ": ", ErrorMessage(response->body)));
  }
  try {
    return FindModel(nlohmann::json::parse(response->body), model);
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat("malformed /v1/models response: ", e.what()));
  }
}

absl::StatusOr<LoadResult> RunLoad(const std::vector<Session>& sessions, const LoadOptions& options) {
  RETURN_IF_ERROR(Validate(options));
  const std::optional<EngineCounters> engine_before = ScrapeEngineCounters(options.url);
  LoadResult load;
  load.requests.resize(CountRequests(sessions));
  std::vector<size_t> first_request(sessions.size());
  for (size_t s = 1; s < sessions.size(); ++s) first_request[s] = first_request[s - 1] + sessions[s - 1].turns.size();

  absl::Mutex progress_mu;
  int64_t done = 0;
  auto run_session = [&](size_t s) {
    for (size_t t = 0; t < sessions[s].turns.size(); ++t) {
      load.requests[first_request[s] + t] = SendCompletion(options, sessions[s].turns[t]);
      absl::MutexLock lock(&progress_mu);
      ++done;
      if (options.on_request_done) options.on_request_done(done, static_cast<int64_t>(load.requests.size()));
    }
  };

  const Clock::time_point start = Clock::now();
  const bool closed_loop = options.concurrency > 0;
  SessionPool pool(closed_loop ? static_cast<size_t>(options.concurrency) : kMaxOpenLoopSessions, run_session);
  if (closed_loop) {
    for (size_t s = 0; s < sessions.size(); ++s) pool.Submit(s);
  } else {
    DispatchOpenLoop(sessions.size(), options, pool);
  }
  pool.Close();
  load.duration_s = std::chrono::duration<double>(Clock::now() - start).count();
  if (const std::optional<EngineCounters> engine_after = ScrapeEngineCounters(options.url);
      engine_before.has_value() && engine_after.has_value()) {
    load.engine = EngineStepsBetween(*engine_before, *engine_after);
  }
  return load;
}

absl::StatusOr<std::vector<int64_t>> ParseConcurrencyList(absl::string_view list) {
  std::vector<int64_t> levels;
  for (absl::string_view entry : absl::StrSplit(list, ',')) {
    int64_t level;
    if (!absl::SimpleAtoi(entry, &level) || level < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--sweep takes positive integers separated by commas, as 1,16,64; not '", list, "'"));
    }
    levels.push_back(level);
  }
  return levels;
}

absl::StatusOr<std::vector<SweepPoint>> RunSweep(const std::vector<SweepLevel>& levels, const LoadOptions& options,
                                                 const std::function<void(const SweepPoint&)>& on_level_done) {
  for (const SweepLevel& level : levels) {
    if (level.concurrency < 1) return absl::InvalidArgumentError("a sweep's concurrency levels must be positive");
  }
  std::vector<SweepPoint> points;
  for (const SweepLevel& level : levels) {
    LoadOptions closed_loop = options;
    closed_loop.concurrency = level.concurrency;
    ASSIGN_OR_RETURN(LoadResult load, RunLoad(level.sessions, closed_loop));
    points.push_back({.concurrency = level.concurrency, .summary = Summarize(load.requests, load.duration_s)});
    points.back().summary.engine = load.engine;
    if (on_level_done) on_level_done(points.back());
  }
  return points;
}

}  // namespace mlaserve::bench
