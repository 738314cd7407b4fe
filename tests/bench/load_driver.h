// Drives a workload against an OpenAI-compatible server: streams every request
// from POST /v1/completions and times it as it arrives. Open loop: sessions
// start as a Poisson process, whatever the server's pace. Closed loop: a fixed
// number of sessions in flight, the next starting as soon as one ends. One
// thread per session in flight; a session's turns run one after another. A
// sweep runs one closed loop per concurrency level.
#ifndef MLASERVE_TESTS_BENCH_LOAD_DRIVER_H_
#define MLASERVE_TESTS_BENCH_LOAD_DRIVER_H_

#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "tests/bench/stats.h"
#include "tests/bench/workload.h"

namespace mlaserve::bench {

// A model as GET /v1/models lists it.
struct ModelInfo {
  std::string id;
  int64_t max_model_len = 0;  // 0: not reported
  int64_t vocab_size = 0;     // 0: not reported
};

// `url` is scheme://host:port. Returns the entry for `model`, or the first
// entry when `model` is empty; NotFound if the server does not list it.
absl::StatusOr<ModelInfo> FetchModelInfo(const std::string& url, const std::string& model);

struct LoadOptions {
  std::string url;  // scheme://host:port
  std::string model;
  // Open loop: sessions per second, exponential gaps; infinity starts them all at once.
  double request_rate = std::numeric_limits<double>::infinity();
  // Closed loop when positive: sessions in flight, overriding request_rate.
  int64_t concurrency = 0;
  absl::Duration timeout = absl::Minutes(10);  // per request, from send to the stream's end
  uint64_t seed = 0;                           // of the open loop's arrival gaps
  // Sent as "ignore_eos": true, so outputs run to max_tokens and their
  // lengths are the workload's; false leaves the field out.
  bool ignore_eos = true;
  // Sent as "logprobs" when >= 0 (0: the sampled token's only). mlaserve
  // streams no chunk for a token whose text is empty unless it has logprobs,
  // so with a random-weights model only logprobs time every token; but they
  // cost the workers a host copy of the logits every step, slowing the server
  // under test. -1: not asked for.
  int32_t logprobs = -1;
  // Called after every request with the number done so far and the total;
  // calls are serialized, from the driver's threads.
  std::function<void(int64_t done, int64_t total)> on_request_done;
};

struct LoadResult {
  std::vector<RequestResult> requests;  // in workload order: session by session, turn by turn
  double duration_s = 0;                // from the start of the run to the end of its last response
  std::optional<EngineSteps> engine;    // the server's engine loop meanwhile, when its /metrics tell
};

// Requests that fail are recorded in the result, not returned as errors;
// the status is only for unusable options.
absl::StatusOr<LoadResult> RunLoad(const std::vector<Session>& sessions, const LoadOptions& options);

// "1,16,64,256": the concurrency levels of a sweep, in the order given.
// InvalidArgument unless every entry is a positive integer.
absl::StatusOr<std::vector<int64_t>> ParseConcurrencyList(absl::string_view list);

// One level of a sweep: its closed loop's concurrency and its sessions.
struct SweepLevel {
  int64_t concurrency = 0;
  std::vector<Session> sessions;
};

// Runs each level's sessions as a closed loop at its concurrency, one level
// after another, each with `options` but its own concurrency; calls
// `on_level_done` (if set) with each level's result as it ends. Failed
// requests are counted in the levels' summaries, not returned as errors.
// REQUIRES: every level's concurrency is positive (checked first: InvalidArgument).
absl::StatusOr<std::vector<SweepPoint>> RunSweep(const std::vector<SweepLevel>& levels, const LoadOptions& options,
                                                 const std::function<void(const SweepPoint&)>& on_level_done = {});

}  // namespace mlaserve::bench

#endif  // MLASERVE_TESTS_BENCH_LOAD_DRIVER_H_
