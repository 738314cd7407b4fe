// MLA attention on Hopper for the CUDA backend (kernels/cuda/cuda_ops.cc
// delegates Ops::MlaAbsorbedAttention and Ops::MlaExpandedAttention here).
// bf16 storage, float32 accumulation; same contracts as kernels/ops.h.
//
// The absorbed form is the serving hot path: queries of all local heads
// against the paged latent cache (c_kv ++ k_rope per token), output in latent
// space. Decode (one query token per sequence) splits long contexts over
// fixed-size KV chunks (flash-decoding) so that a few long sequences still
// fill the GPU; the chunk size never depends on the batch, so a sequence's
// output is the same whatever shares its batch. Prefill chunks (several query
// tokens per sequence, causal over the cached prefix plus themselves) use the
// same kernels.
//
// An MlaAttention owns the device buffers its launches need (batch metadata,
// split-KV partial results) and reuses them across calls; it runs on the
// stream it was given. Not thread-safe.
#ifndef MLASERVE_KERNELS_CUDA_MLA_ATTENTION_H_
#define MLASERVE_KERNELS_CUDA_MLA_ATTENTION_H_

#include <cuda_runtime.h>

#include <memory>

#include "absl/status/status.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace mlaserve {

class MlaAttention {
 public:
  explicit MlaAttention(cudaStream_t stream);
  ~MlaAttention();
  MlaAttention(const MlaAttention&) = delete;
  MlaAttention& operator=(const MlaAttention&) = delete;

  absl::Status Absorbed(const Tensor& q_latent, const Tensor& q_rope, const Tensor& cache, int64_t layer,
                        const AttentionLayout& layout, float softmax_scale, Tensor* out);
  absl::Status Expanded(const Tensor& q_nope, const Tensor& q_rope, const Tensor& k_nope, const Tensor& k_rope,
                        const Tensor& v, float softmax_scale, Tensor* out);

 private:
  struct Buffers;
  cudaStream_t stream_;
  std::unique_ptr<Buffers> buffers_;
};

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_CUDA_MLA_ATTENTION_H_
