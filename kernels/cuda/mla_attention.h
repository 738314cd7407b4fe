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

#include <cstdint>
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
  // Plans and uploads the absorbed form's work for `layout` ahead of the
  // step's calls (queries of `heads` x `rank` + `rope`, cache of
  // `num_blocks`), so that those calls only launch.
  absl::Status Prepare(const AttentionLayout& layout, int64_t heads, int64_t rank, int64_t rope, int64_t num_blocks);
  // The step `Prepare` was for is over: its layout may change or go away.
  void EndStep() { prepared_ = nullptr; }
  // Forbids (or allows again) planning and uploading inside Absorbed: a call
  // whose plan was not prepared then fails instead (a recorded step must
  // replay without them).
  void set_launch_only(bool launch_only) { launch_only_ = launch_only; }
  // Identifies everything the prepared plan's launches depend on (grid sizes,
  // buffer addresses) but not the metadata it uploaded: equal signatures
  // launch the same kernels with the same arguments.
  uint64_t LaunchSignature() const;
  absl::Status Expanded(const Tensor& q_nope, const Tensor& q_rope, const Tensor& k_nope, const Tensor& k_rope,
                        const Tensor& v, int64_t first_head, float softmax_scale, Tensor* out);

 private:
  struct Buffers;
  // The plan for `layout` made and uploaded, unless it is the current one.
  absl::Status EnsurePlan(const AttentionLayout& layout, int64_t heads, int64_t rank, int64_t num_blocks,
                          bool tensor_cores);

  cudaStream_t stream_;
  std::unique_ptr<Buffers> buffers_;
  bool launch_only_ = false;
  const AttentionLayout* prepared_ = nullptr;
};

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_CUDA_MLA_ATTENTION_H_
