// Shape validation at op boundaries: a mismatch is a programming error of the
// caller, reported as InvalidArgument naming the op and the operand.
#ifndef MLASERVE_KERNELS_SHAPE_CHECK_H_
#define MLASERVE_KERNELS_SHAPE_CHECK_H_

#include <cstdint>
#include <initializer_list>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "kernels/tensor.h"

namespace mlaserve {

// -1 in `dims` matches any extent.
absl::Status CheckShape(absl::string_view op, absl::string_view operand, const Tensor& t,
                        std::initializer_list<int64_t> dims);
absl::Status CheckDType(absl::string_view op, absl::string_view operand, const Tensor& t, DType dtype);
// An FP8 weight as Ops::Linear takes it: F8E4M3 values whose last dimension
// is a multiple of 16, float32 scales of shape [leading dims..., Fp8Groups(last)].
absl::Status CheckFp8Weight(absl::string_view op, absl::string_view operand, const Tensor& w);
// Ops::SampleTokens' arguments: logits [shards, rows, shard_vocab] covering
// `vocab` tokens, and one parameter set, draw index and token per row.
absl::Status CheckSampleArgs(const Tensor& logits, int64_t vocab, size_t num_params, size_t num_indices,
                             size_t num_tokens);

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_SHAPE_CHECK_H_
