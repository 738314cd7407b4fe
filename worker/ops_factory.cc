#include "worker/ops_factory.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_ops.h"

namespace mlaserve {

absl::StatusOr<std::unique_ptr<Ops>> NewOps(const std::string& device, bool step_graphs) {
  if (device == "cpu") return NewCpuOps();
  const CudaOpsOptions options{.step_graphs = step_graphs};
  if (device == "cuda") return NewCudaOps(0, options);
  int gpu = 0;
  if (absl::StartsWith(device, "cuda:") && absl::SimpleAtoi(device.substr(5), &gpu) && gpu >= 0) {
    return NewCudaOps(gpu, options);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown device \"", device, "\" (cpu or cuda)"));
}

}  // namespace mlaserve
