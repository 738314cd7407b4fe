// What a GPU worker holds once its weights are loaded, for sizing its KV
// pool. The backend's memory pool keeps memory freed into it for reuse (a
// CUDA stream-ordered pool with no release threshold). So, with the weights
// loaded, the worker hands back what loading left in the pool, runs the
// largest step the scheduler may send once: the drop in free memory across
// it, less its scratch cache, is that step's activations; and hands the pool
// back again, so that the KV pool and later steps take fresh memory. What the
// worker needs besides its KV pool is then the drop in free memory since it
// started (weights, communicators' and libraries' buffers) plus those
// activations, plus the most a long context's expanded attention takes
// beyond them (Model::expanded_scratch_bytes). The CUDA context, made before the first reading, and the CUDA
// graphs recorded later are not in it: the share of the GPU outside
// --gpu_memory_utilization covers them.
#ifndef MLASERVE_WORKER_MEMORY_PROFILE_H_
#define MLASERVE_WORKER_MEMORY_PROFILE_H_

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "kernels/latent_row.h"
#include "kernels/ops.h"
#include "worker/model.h"

namespace mlaserve {

// A worker's GPU memory (kernels/cuda/cuda_ops.h's CudaMemoryInfo and
// CudaReleaseCachedMemory on a CUDA device).
struct GpuMemory {
  int64_t capacity_bytes = 0;  // what the worker may use in all
  std::function<absl::StatusOr<int64_t>()> free_bytes;  // the GPU's free memory now
  std::function<absl::Status()> release_cached;         // hands the pool's freed memory back
};

// The scheduler's limits on one step: tokens and sequences.
struct StepShape {
  int64_t max_tokens = 0;
  int64_t max_sequences = 0;
};

// Runs one step of `shape` through `model` and waits for it: one sequence
// prefilling all tokens but one per other sequence (at least two, so the
// step is never recorded as a decode step), the others decoding one token
// each, every sequence sampled, on a scratch cache of `block_size`-token
// blocks in `kv_dtype`. Returns the scratch cache's bytes: freed on return, but possibly
// kept by the backend's pool, so the caller does not count them as the
// step's. Every rank of a group must call it together (the step meets the
// other ranks in its collectives).
// REQUIRES: shape.max_tokens > 0 and shape.max_sequences > 0.
absl::StatusOr<int64_t> RunLargestStep(Model& model, Ops& ops, int64_t block_size, KvCacheDtype kv_dtype,
                                       const StepShape& shape);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_MEMORY_PROFILE_H_
