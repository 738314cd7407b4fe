// The backend a worker or tool runs on, by name: "cpu" (the float32
// reference, always there) or "cuda" (the Hopper backend, GPU 0 unless the
// name says "cuda:N"; decode steps recorded as CUDA graphs unless
// `step_graphs` is false).
#ifndef MLASERVE_WORKER_OPS_FACTORY_H_
#define MLASERVE_WORKER_OPS_FACTORY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/ops.h"

namespace mlaserve {

absl::StatusOr<std::unique_ptr<Ops>> NewOps(const std::string& device, bool step_graphs = true);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_OPS_FACTORY_H_
