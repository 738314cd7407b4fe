#include "kernels/shape_check.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mlaserve {

absl::Status CheckShape(absl::string_view op, absl::string_view operand, const Tensor& t,
                        std::initializer_list<int64_t> dims) {
  bool ok = t.rank() == static_cast<int64_t>(dims.size());
  int i = 0;
  for (int64_t d : dims) {
    if (ok && d >= 0 && t.shape[i] != d) ok = false;
    ++i;
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", operand, " has shape ", t.ShapeString(),
                                                 ", expected [", absl::StrJoin(dims, ", "), "]"));
}

absl::Status CheckDType(absl::string_view op, absl::string_view operand, const Tensor& t, DType dtype) {
  if (t.dtype == dtype) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", operand, " has dtype ", std::string(DTypeName(t.dtype)),
                                                 ", expected ", std::string(DTypeName(dtype))));
}

}  // namespace mlaserve
