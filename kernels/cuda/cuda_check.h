// CUDA return codes become absl::Status naming the call and where it failed.
#ifndef MLASERVE_KERNELS_CUDA_CUDA_CHECK_H_
#define MLASERVE_KERNELS_CUDA_CUDA_CHECK_H_

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mlaserve {

inline absl::Status CudaStatus(cudaError_t err, const char* expr, const char* file, int line) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", expr, " failed: ", cudaGetErrorName(err), " (",
                                          cudaGetErrorString(err), ")"));
}

}  // namespace mlaserve

// Returns the failure of a CUDA runtime call (or kernel launch) as a Status.
#define CUDA_RETURN_IF_ERROR(expr)                                                       \
  do {                                                                                   \
    absl::Status mla_cuda_status_ = ::mlaserve::CudaStatus((expr), #expr, __FILE__, __LINE__); \
    if (!mla_cuda_status_.ok()) return mla_cuda_status_;                                 \
  } while (0)

#endif  // MLASERVE_KERNELS_CUDA_CUDA_CHECK_H_
