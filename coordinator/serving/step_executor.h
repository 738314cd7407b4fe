// How an engine group reaches its workers: it launches steps, and collects
// their results in launch order. The loop keeps one step launched ahead of
// the one it collects, so that the workers compute step N+1 while the
// coordinator applies step N's tokens; the executor only carries steps.
//
// Implementations: GrpcStepExecutor (one Steps stream per worker), and fakes
// in unit tests, which let the engine loop be tested without processes.
#ifndef MLASERVE_COORDINATOR_SERVING_STEP_EXECUTOR_H_
#define MLASERVE_COORDINATOR_SERVING_STEP_EXECUTOR_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/worker.pb.h"

namespace mlaserve {

class StepExecutor {
 public:
  virtual ~StepExecutor() = default;

  // Sends `step` to every worker of the group and returns without waiting for
  // it to run. An error means the group can no longer run steps.
  // REQUIRES: fewer than two steps launched and not yet collected.
  virtual absl::Status Launch(const internal::v1::StepRequest& step) = 0;

  // Waits for the oldest launched step and returns one response per
  // attention replica (from its first rank), in replica order. After an
  // error, every later Launch and Collect fails at once.
  // REQUIRES: a launched step not yet collected.
  virtual absl::StatusOr<std::vector<internal::v1::StepResponse>> Collect() = 0;

  // Makes a Collect waiting on a worker that will never answer return `why`
  // (the group was declared failed). Safe from any thread.
  virtual void Abort(const absl::Status& why) = 0;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_STEP_EXECUTOR_H_
