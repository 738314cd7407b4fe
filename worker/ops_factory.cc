#include "worker/ops_factory.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_ops.h"

namespace mlaserve {

absl::StatusOr<std::unique_ptr<Ops>> NewOps(const std::string& device) {
  if (device == "cpu") return NewCpuOps();
  if (device == "cuda") return NewCudaOps(0);
  int gpu = 0;
  if (absl::StartsWith(device, "cuda:") && absl::SimpleAtoi(device.substr(5), &gpu) && gpu >= 0) return NewCudaOps(gpu);
  return absl::InvalidArgumentError(absl::StrCat("unknown device \"", device, "\" (cpu or cuda)"));
}

}  // namespace mlaserve
