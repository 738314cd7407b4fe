// absl::Status <-> grpc::Status, keeping code and message: gRPC's codes are
// the same canonical codes as Abseil's.
#ifndef MLASERVE_COMMON_GRPC_STATUS_H_
#define MLASERVE_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace mlaserve {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace mlaserve

#endif  // MLASERVE_COMMON_GRPC_STATUS_H_
