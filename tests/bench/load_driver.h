// Drives a workload against an OpenAI-compatible server: streams every request
// from POST /v1/completions and times it as it arrives. Open loop: sessions
// start as a Poisson process, whatever the server's pace. Closed loop: a fixed
// number of sessions in flight, the next starting as soon as one ends. One
// thread per session in flight; a session's turns run one after another.
#ifndef MLASERVE_TESTS_BENCH_LOAD_DRIVER_H_
#define MLASERVE_TESTS_BENCH_LOAD_DRIVER_H_

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
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
  // Called after every request with the number done so far and the total;
  // calls are serialized, from the driver's threads.
  std::function<void(int64_t done, int64_t total)> on_request_done;
};

struct LoadResult {
  std::vector<RequestResult> requests;  // in workload order: session by session, turn by turn
  double duration_s = 0;                // from the start of the run to the end of its last response
};

// Requests that fail are recorded in the result, not returned as errors;
// the status is only for unusable options.
absl::StatusOr<LoadResult> RunLoad(const std::vector<Session>& sessions, const LoadOptions& options);

}  // namespace mlaserve::bench

#endif  // MLASERVE_TESTS_BENCH_LOAD_DRIVER_H_
