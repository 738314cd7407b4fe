#include "kernels/cuda/step_graphs.h"

#include <utility>

#include "common/status_macros.h"
#include "kernels/cuda/cuda_check.h"

namespace mlaserve {

StepGraphs::StepGraphs(cudaStream_t stream, Adopt adopt, int max_graphs)
    : stream_(stream), adopt_(std::move(adopt)), max_graphs_(max_graphs) {}

StepGraphs::~StepGraphs() { Clear(); }

void StepGraphs::Clear() {
  for (auto& [key, recording] : recordings_) {
    if (recording.exec != nullptr) cudaGraphExecDestroy(recording.exec);  // errors at exit are ignored
  }
  recordings_.clear();
  order_.clear();
}

absl::StatusOr<Tensor> StepGraphs::Run(uint64_t key, const std::function<absl::StatusOr<Tensor>()>& forward) {
  const auto it = recordings_.find(key);
  if (it == recordings_.end()) return Capture(key, forward);
  const Recording& recording = it->second;
  if (recording.exec == nullptr) {
    ++stats_.eager;
    return forward();
  }
  CUDA_RETURN_IF_ERROR(cudaGraphLaunch(recording.exec, stream_));
  ++stats_.replays;
  return adopt_(recording.output, recording.dtype, recording.shape);
}

absl::StatusOr<Tensor> StepGraphs::Capture(uint64_t key, const std::function<absl::StatusOr<Tensor>()>& forward) {
  CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  absl::StatusOr<Tensor> output = forward();
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
  cudaGraphExec_t exec = nullptr;
  const bool recorded = output.ok() && ended == cudaSuccess && graph != nullptr &&
                        cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (!recorded) {
    // Nothing ran under capture: run the step for real, and remember not to try again.
    cudaGetLastError();
    Remember(key, Recording{});
    ++stats_.eager;
    return forward();
  }
  Remember(key, Recording{exec, output->data, output->dtype, output->shape});
  CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, stream_));
  ++stats_.captures;
  return output;
}

void StepGraphs::Remember(uint64_t key, Recording recording) {
  if (static_cast<int>(recordings_.size()) >= max_graphs_) {
    const auto oldest = recordings_.find(order_.front());
    if (oldest->second.exec != nullptr) cudaGraphExecDestroy(oldest->second.exec);
    recordings_.erase(oldest);
    order_.pop_front();
  }
  recordings_[key] = std::move(recording);
  order_.push_back(key);
}

}  // namespace mlaserve
