// What each step of an engine group ran and how long its workers took: the
// samples the cluster simulator fits its step costs to (simulator/step_cost.h).
// The coordinator writes them with --step_trace, one CSV line per step.
#ifndef MLASERVE_COORDINATOR_SERVING_STEP_TRACE_H_
#define MLASERVE_COORDINATOR_SERVING_STEP_TRACE_H_

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/serving/scheduler.h"

namespace mlaserve {

// A step as its cost depends on it. Experts and dense layers run every
// replica's tokens; attention runs per replica, so the busiest replica's
// share is what the group waits for.
struct StepShape {
  int64_t sequences = 0;
  int64_t tokens = 0;
  int64_t prefill_tokens = 0;  // of `tokens`, those of prompt chunks longer than one token
  int64_t max_replica_tokens = 0;
  int64_t max_replica_attended = 0;  // query-key pairs of the busiest replica's attention
  // Those pairs split by kind, each on the replica with the most of them (a
  // cost model's; traces do not record them): one-token sequences', which
  // read the cache, and prompt chunks', which compute every pair.
  int64_t max_replica_decode_attended = 0;
  int64_t max_replica_prompt_attended = 0;

  // Adds one replica's scheduled sequences.
  void AddReplica(const std::vector<ScheduledSequence>& scheduled);
};

// One step of a trace.
struct StepSample {
  int32_t group = 0;
  int workers = 0;  // in the group
  StepShape shape;
  double seconds = 0;  // from when the workers could start it to when its samples came back
};

// Thread-safe: every engine group records into one trace.
class StepTrace {
 public:
  // Creates (truncates) `path` and writes the header.
  static absl::StatusOr<std::unique_ptr<StepTrace>> Create(const std::string& path);
  ~StepTrace();

  void Record(const StepSample& sample);

 private:
  explicit StepTrace(std::FILE* file) : file_(file) {}
  absl::Mutex mu_;
  std::FILE* const file_;
};

// The samples of a trace file StepTrace wrote.
// Errors: NotFound, or InvalidArgument naming the line that does not parse.
absl::StatusOr<std::vector<StepSample>> ReadStepTrace(const std::string& path);

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_STEP_TRACE_H_
