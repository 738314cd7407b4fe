// Host side of the MLA kernels: raising shared-memory limits, the SM count
// that sizes persistent grids, and each absorbed kernel's launch (MlaAbsorbed
// dispatches between them). Internal to kernels/cuda/mla.
#ifndef MLASERVE_KERNELS_CUDA_MLA_LAUNCH_H_
#define MLASERVE_KERNELS_CUDA_MLA_LAUNCH_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "kernels/cuda/mla/kernels.h"

namespace mlaserve::cuda::mla {

// Raises a kernel's dynamic shared-memory limit once per device.
inline cudaError_t AllowSmem(const void* kernel, int bytes, std::atomic<uint64_t>& done) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = uint64_t{1} << (device & 63);
  if (done.load(std::memory_order_acquire) & bit) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) done.fetch_or(bit, std::memory_order_acq_rel);
  return err;
}

// CTAs that fit on the device at once (one per SM), cached per device.
inline int SmCount() {
  static std::atomic<int> counts[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 132;
  int n = counts[device & 63].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) n = 132;
    counts[device & 63].store(n, std::memory_order_relaxed);
  }
  return n;
}

// Persistent grids: at most one CTA per SM, each looping over work items and
// loading the next item's first tile while it finishes the current one.
inline int PersistentGrid(int num_items) { return std::min(num_items, SmCount()); }

cudaError_t LaunchRows16(const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params, cudaStream_t stream);
cudaError_t LaunchRows64(const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params, cudaStream_t stream);
// The expanded form at DeepSeek's dims (nope 128, rope 64, v 128) on wgmma.
cudaError_t LaunchExpandedWg(const MlaExpandedParams& params, cudaStream_t stream);
cudaError_t LaunchAbsorbedGeneric(const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params,
                                  cudaStream_t stream);

}  // namespace mlaserve::cuda::mla

#endif  // MLASERVE_KERNELS_CUDA_MLA_LAUNCH_H_
