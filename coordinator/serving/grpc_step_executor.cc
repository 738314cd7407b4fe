#include "coordinator/serving/grpc_step_executor.h"

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"

namespace mlaserve {

GrpcStepExecutor::GrpcStepExecutor(std::vector<WorkerInfo> workers, int tp, absl::Duration step_timeout)
    : workers_(std::move(workers)), tp_(tp), step_timeout_(step_timeout), watchdog_([this] { Watch(); }) {}

GrpcStepExecutor::~GrpcStepExecutor() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    changed_.SignalAll();
    Break(absl::CancelledError("engine group stopped"));
  }
  watchdog_.join();
  for (auto& channel : channels_) Finish(*channel).IgnoreError();
}

absl::Status GrpcStepExecutor::Finish(Channel& channel) {
  if (channel.finished) return absl::OkStatus();
  channel.finished = true;
  return FromGrpcStatus(channel.stream->Finish());
}

void GrpcStepExecutor::Break(const absl::Status& why) {
  if (broken_.ok()) broken_ = why;
  for (auto& channel : channels_) channel->context.TryCancel();
}

absl::Status GrpcStepExecutor::broken() const {
  absl::MutexLock lock(&mu_);
  return broken_;
}

void GrpcStepExecutor::Abort(const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  Break(why);
}

void GrpcStepExecutor::Watch() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    if (absl::Now() >= collect_deadline_) {
      Break(absl::DeadlineExceededError(
          absl::StrCat("a worker did not answer a step within ", absl::FormatDuration(step_timeout_))));
      collect_deadline_ = absl::InfiniteFuture();
    }
    changed_.WaitWithDeadline(&mu_, collect_deadline_);
  }
}

absl::Status GrpcStepExecutor::Open() {
  absl::MutexLock lock(&mu_);
  if (opened_) return broken_;
  opened_ = true;
  for (const WorkerInfo& worker : workers_) {
    auto channel = std::make_unique<Channel>();
    channel->stream = worker.stub->Steps(&channel->context);
    channels_.push_back(std::move(channel));
  }
  return broken_;
}

absl::Status GrpcStepExecutor::Launch(const internal::v1::StepRequest& step) {
  RETURN_IF_ERROR(Open());
  for (size_t rank = 0; rank < channels_.size(); ++rank) {
    if (!channels_[rank]->stream->Write(step)) {
      absl::MutexLock lock(&mu_);
      Break(absl::UnavailableError(
          absl::StrCat("worker ", workers_[rank].id, " (", workers_[rank].address, ") closed its step stream")));
      return broken_;
    }
  }
  launched_.push_back(step.step_id());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<internal::v1::StepResponse>> GrpcStepExecutor::Collect() {
  RETURN_IF_ERROR(broken());
  if (launched_.empty()) return absl::FailedPreconditionError("Collect without a launched step");
  const int64_t step_id = launched_.front();
  launched_.pop_front();
  {
    absl::MutexLock lock(&mu_);
    collect_deadline_ = absl::Now() + step_timeout_;
    changed_.Signal();
  }
  std::vector<internal::v1::StepResponse> responses(channels_.size() / tp_);
  absl::Status failed;
  for (size_t rank = 0; rank < channels_.size() && failed.ok(); ++rank) {
    internal::v1::StepResponse response;
    if (!channels_[rank]->stream->Read(&response)) {
      absl::MutexLock lock(&mu_);
      // The stream's own status says why, unless this side cut it.
      const absl::Status why = broken_.ok() ? Finish(*channels_[rank]) : broken_;
      failed = absl::UnavailableError(absl::StrCat("worker ", workers_[rank].id, " (", workers_[rank].address,
                                                   ") failed a step: ", why.ToString()));
      Break(failed);
    } else if (response.step_id() != step_id) {
      failed = absl::InternalError(absl::StrCat("worker ", workers_[rank].id, " answered step ", response.step_id(),
                                                " for step ", step_id));
      absl::MutexLock lock(&mu_);
      Break(failed);
    } else if (rank % tp_ == 0) {
      responses[rank / tp_] = std::move(response);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    collect_deadline_ = absl::InfiniteFuture();
  }
  if (!failed.ok()) return failed;
  return responses;
}

}  // namespace mlaserve
