// NCCL return codes become absl::Status naming the call and where it failed,
// as kernels/cuda/cuda_check.h does for the CUDA runtime.
#ifndef MLASERVE_WORKER_COMM_NCCL_CHECK_H_
#define MLASERVE_WORKER_COMM_NCCL_CHECK_H_

#include <nccl.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mlaserve {

// The code says who is to blame: a peer or the link (Unavailable, worth a
// rebuilt group), the caller (InvalidArgument), or NCCL/CUDA (Internal).
// ncclInProgress is not an error only for non-blocking communicators, whose
// callers check for it before calling this.
inline absl::Status NcclStatus(ncclResult_t result, const char* expr, const char* file, int line) {
  if (result == ncclSuccess) return absl::OkStatus();
  std::string message = absl::StrCat(file, ":", line, ": ", expr, " failed: ", ncclGetErrorString(result));
  switch (result) {
    case ncclRemoteError:
    case ncclSystemError: return absl::UnavailableError(message);
    case ncclInvalidArgument:
    case ncclInvalidUsage: return absl::InvalidArgumentError(message);
    default: return absl::InternalError(message);
  }
}

}  // namespace mlaserve

// Returns the failure of an NCCL call as a Status.
#define NCCL_RETURN_IF_ERROR(expr)                                                             \
  do {                                                                                         \
    absl::Status mla_nccl_status_ = ::mlaserve::NcclStatus((expr), #expr, __FILE__, __LINE__); \
    if (!mla_nccl_status_.ok()) return mla_nccl_status_;                                       \
  } while (0)

#endif  // MLASERVE_WORKER_COMM_NCCL_CHECK_H_
