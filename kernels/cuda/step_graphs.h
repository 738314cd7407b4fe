// Whole forward steps recorded as CUDA graphs and replayed (Ops::RunStep on
// the CUDA backend). A decode step enqueues ~25 ops per layer, and at small
// batches the host work of enqueuing them, not the GPU, sets the pace; a
// replayed graph launches them all at once. A step is captured the first
// time its key is seen (the key covers everything its launches depend on:
// batch shape, attention plan, buffer addresses; the caller makes it) and
// replayed for every later step with that key. A step that cannot be
// captured (an op synchronizes or uploads) runs eagerly, and its key is
// remembered as such. Owns the graphs; runs on the stream it was given.
#ifndef MLASERVE_KERNELS_CUDA_STEP_GRAPHS_H_
#define MLASERVE_KERNELS_CUDA_STEP_GRAPHS_H_

#include <cuda_runtime.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace mlaserve {

struct StepGraphStats {
  int64_t captures = 0;  // steps recorded (and run by launching the recording)
  int64_t replays = 0;   // steps run from an earlier recording
  int64_t eager = 0;     // steps that could not be recorded
};

class StepGraphs {
 public:
  // A Tensor owning device memory at `data` (the backend's deleter), for a
  // replayed step's output.
  using Adopt = std::function<Tensor(void* data, DType dtype, std::vector<int64_t> shape)>;

  StepGraphs(cudaStream_t stream, Adopt adopt, int max_graphs = 32);
  ~StepGraphs();
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;

  // The step's output: `forward` (which enqueues the step on the stream and
  // returns its output) captured and launched, or the recording for `key`
  // launched. The output's memory belongs to the recording: it must be
  // released (freeing it in stream order) before the recording runs again.
  absl::StatusOr<Tensor> Run(uint64_t key, const std::function<absl::StatusOr<Tensor>()>& forward);
  // True while `forward` runs under capture: ops must then not synchronize or upload.
  bool capturing() const { return capturing_; }
  // Drops every recording (the buffers they were captured with went away).
  void Clear();
  const StepGraphStats& stats() const { return stats_; }

 private:
  struct Recording {
    cudaGraphExec_t exec = nullptr;  // null: the step could not be captured
    void* output = nullptr;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
  };
  absl::StatusOr<Tensor> Capture(uint64_t key, const std::function<absl::StatusOr<Tensor>()>& forward);
  void Remember(uint64_t key, Recording recording);

  cudaStream_t stream_;
  Adopt adopt_;
  int max_graphs_;
  bool capturing_ = false;
  std::unordered_map<uint64_t, Recording> recordings_;
  std::deque<uint64_t> order_;  // oldest first, for eviction
  StepGraphStats stats_;
};

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_CUDA_STEP_GRAPHS_H_
