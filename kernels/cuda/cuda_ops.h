// The CUDA (Hopper) implementation of the Ops interface (kernels/ops.h).
//
// Tensors live on one GPU (Device::kCuda): bf16 activations, weights and
// latent cache (storage_dtype() is kBF16), float32 router weights, int32
// expert ids. Memory comes from the device's stream-ordered pool
// (cudaMallocAsync/cudaFreeAsync on the backend's stream; a tensor may outlive
// its Ops). All work is queued on one stream; Download and Upload wait for
// it, Synchronize() waits for everything queued. Token metadata (ids,
// positions, cache slots, block tables) arrives as host arrays, is checked
// on the host (bad ids are InvalidArgument, bad slots OutOfRange, as on the
// CPU) and is copied into device buffers the backend reuses.
//
// Matrix products are cuBLASLt bf16 GEMMs with float32 accumulation, one
// algorithm per weight shape (kernels/cuda/gemm.h); the MLA attention ops
// delegate to MlaAttention (kernels/cuda/mla_attention.h); routed experts
// and sampling are this backend's own kernels (moe.h, sampling.h).
//
// Batch invariance: every custom kernel computes a row from that row alone
// (or, in the grouped expert GEMM, each element in a fixed k order), and the
// GEMMs keep one algorithm whatever the row count, so a sequence's results
// do not depend on the other sequences of its batch.
//
// Steps: BeginStep uploads the step's token arrays once (every layer's ops
// read that copy) and plans the step's attention; RunStep records decode
// steps as CUDA graphs and replays them for later steps of the same shape
// (kernels/cuda/step_graphs.h).
//
// Not thread-safe: one thread drives one CudaOps.
#ifndef MLASERVE_KERNELS_CUDA_CUDA_OPS_H_
#define MLASERVE_KERNELS_CUDA_CUDA_OPS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/cuda/step_graphs.h"
#include "kernels/ops.h"

namespace mlaserve {

struct CudaOpsOptions {
  bool step_graphs = true;  // record and replay decode steps (Ops::RunStep)
};

// The backend on GPU `device`; FailedPrecondition when there is no such GPU
// (or no usable CUDA driver), naming the reason.
absl::StatusOr<std::unique_ptr<Ops>> NewCudaOps(int device = 0, CudaOpsOptions options = {});

// How a CudaOps ran its steps so far (zeros for another backend).
StepGraphStats GetStepGraphStats(const Ops& ops);

// Number of usable CUDA devices (0 when there is no GPU or driver).
int CudaDeviceCount();

// The UUID of GPU `device` (hex digits), which tells two processes whether
// they share a GPU.
absl::StatusOr<std::string> CudaDeviceUuid(int device);

// GPU memory as the driver counts it (cudaMemGetInfo): what every process
// on the GPU holds is gone from `free_bytes`.
struct DeviceMemory {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};

// The memory of GPU `device` now.
absl::StatusOr<DeviceMemory> CudaMemoryInfo(int device);

// Waits for GPU `device`'s work, then hands back to the GPU what the
// device's default memory pool (the backend's) keeps of the memory freed
// into it, so that free memory counts only what is in use.
absl::Status CudaReleaseCachedMemory(int device);

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_CUDA_CUDA_OPS_H_
