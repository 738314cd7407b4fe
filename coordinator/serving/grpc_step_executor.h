// The StepExecutor of a group of worker processes: one long-lived Steps
// stream per worker (opened at the first launch), every step written to all
// of them and every response read back on the engine loop's thread, so a step
// costs no thread and no connection set-up. A watchdog thread (one per group)
// cuts the streams when a collect waits past the step timeout.
#ifndef MLASERVE_COORDINATOR_SERVING_GRPC_STEP_EXECUTOR_H_
#define MLASERVE_COORDINATOR_SERVING_GRPC_STEP_EXECUTOR_H_

#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/serving/step_executor.h"
#include "coordinator/cluster/worker_registry.h"

namespace mlaserve {

class GrpcStepExecutor final : public StepExecutor {
 public:
  // `workers` in rank order; replica r's first rank is workers[r * tp].
  // REQUIRES: tp >= 1 and workers.size() a multiple of tp.
  GrpcStepExecutor(std::vector<WorkerInfo> workers, int tp, absl::Duration step_timeout);
  ~GrpcStepExecutor() override;  // cuts the streams

  absl::Status Launch(const internal::v1::StepRequest& step) override;
  absl::StatusOr<std::vector<internal::v1::StepResponse>> Collect() override;
  void Abort(const absl::Status& why) override;

 private:
  using Stream = grpc::ClientReaderWriter<internal::v1::StepRequest, internal::v1::StepResponse>;
  struct Channel {
    grpc::ClientContext context;
    std::unique_ptr<Stream> stream;
    bool finished = false;  // Finish was called (gRPC allows it once)
  };
  // The stream's final status (once: later calls repeat nothing).
  static absl::Status Finish(Channel& channel);

  absl::Status Open();
  // Marks the executor broken by `why` (the first reason stays) and cuts
  // every stream, which ends any blocked read or write.
  void Break(const absl::Status& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status broken() const ABSL_LOCKS_EXCLUDED(mu_);
  void Watch();

  const std::vector<WorkerInfo> workers_;
  const int tp_;
  const absl::Duration step_timeout_;
  // Touched by the engine loop's thread only (Launch, Collect); the
  // watchdog and Abort only cut them, through their contexts under mu_.
  std::vector<std::unique_ptr<Channel>> channels_;
  std::deque<int64_t> launched_;  // step ids not collected yet

  mutable absl::Mutex mu_;
  absl::CondVar changed_;
  absl::Status broken_ ABSL_GUARDED_BY(mu_);
  bool opened_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time collect_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_GRPC_STEP_EXECUTOR_H_
