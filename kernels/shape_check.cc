#include "kernels/shape_check.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

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

absl::Status CheckFp8Weight(absl::string_view op, absl::string_view operand, const Tensor& w) {
  RETURN_IF_ERROR(CheckDType(op, operand, w, DType::kF8E4M3));
  if (w.rank() == 0 || w.dim(-1) % 16 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": FP8 ", operand, " ", w.ShapeString(), " needs a last dimension divisible by 16"));
  }
  if (w.scale == nullptr) return absl::InvalidArgumentError(absl::StrCat(op, ": FP8 ", operand, " has no scales"));
  RETURN_IF_ERROR(CheckDType(op, absl::StrCat(operand, " scales"), *w.scale, DType::kF32));
  std::vector<int64_t> expected = w.shape;
  expected.back() = Fp8Groups(expected.back());
  if (w.scale->shape != expected || w.scale->device != w.device) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": FP8 ", operand, " ", w.ShapeString(), " has scales ",
                                                   w.scale->ShapeString(), ", expected [",
                                                   absl::StrJoin(expected, ", "), "] on its device"));
  }
  return absl::OkStatus();
}

absl::Status CheckSampleArgs(const Tensor& logits, int64_t vocab, size_t num_params, size_t num_indices,
                             size_t num_tokens) {
  RETURN_IF_ERROR(CheckShape("SampleTokens", "logits", logits, {-1, -1, -1}));
  const int64_t shards = logits.dim(0), rows = logits.dim(1), shard_vocab = logits.dim(2);
  if (vocab <= 0 || vocab > shards * shard_vocab || vocab <= (shards - 1) * shard_vocab) {
    return absl::InvalidArgumentError(absl::StrCat("SampleTokens: vocabulary of ", vocab, " in ", shards,
                                                   " slices of ", shard_vocab));
  }
  for (size_t n : {num_params, num_indices, num_tokens}) {
    if (static_cast<int64_t>(n) != rows) {
      return absl::InvalidArgumentError(absl::StrCat("SampleTokens: ", rows, " rows but ", num_params,
                                                     " parameter sets, ", num_indices, " draw indices and ",
                                                     num_tokens, " token slots"));
    }
  }
  return absl::OkStatus();
}

}  // namespace mlaserve
