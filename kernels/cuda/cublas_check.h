// cuBLAS / cuBLASLt return codes become absl::Status naming the call and
// where it failed (the counterpart of cuda_check.h).
#ifndef MLASERVE_KERNELS_CUDA_CUBLAS_CHECK_H_
#define MLASERVE_KERNELS_CUDA_CUBLAS_CHECK_H_

#include <cublas_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mlaserve {

inline absl::Status CublasStatus(cublasStatus_t status, const char* expr, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", expr, " failed: ", cublasGetStatusName(status), " (",
                                          cublasGetStatusString(status), ")"));
}

}  // namespace mlaserve

// Returns the failure of a cuBLAS or cuBLASLt call as a Status.
#define CUBLAS_RETURN_IF_ERROR(expr)                                                           \
  do {                                                                                         \
    absl::Status mla_cublas_status_ = ::mlaserve::CublasStatus((expr), #expr, __FILE__, __LINE__); \
    if (!mla_cublas_status_.ok()) return mla_cublas_status_;                                   \
  } while (0)

#endif  // MLASERVE_KERNELS_CUDA_CUBLAS_CHECK_H_
