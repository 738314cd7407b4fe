#include "worker/ops_factory.h"

#include "absl/strings/str_cat.h"

namespace mlaserve {

absl::StatusOr<std::unique_ptr<Ops>> NewOps(const std::string& device) {
  if (device == "cpu") return NewCpuOps();
  return absl::InvalidArgumentError(absl::StrCat("unknown device \"", device, "\" (cpu or cuda)"));
}

}  // namespace mlaserve
