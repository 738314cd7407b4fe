// Mixture-of-experts kernels of the CUDA backend on raw device pointers: the
// router (scores, group-limited selection, top-k, normalization) and the
// weighted combine of expert outputs. The expert GEMMs themselves are cuBLAS
// calls made by kernels/cuda/cuda_ops.cc, which sorts the (token, expert)
// pairs by expert on the host.
//
// Both kernels handle one token per block (router: one warp) and read only
// that token's inputs, so a token's result does not depend on its batch.
#ifndef MLASERVE_KERNELS_CUDA_MOE_H_
#define MLASERVE_KERNELS_CUDA_MOE_H_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mlaserve::cuda {

// Same fields and meaning as mlaserve::RouterConfig (kernels/ops.h).
struct RouterParams {
  int64_t rows = 0;
  int64_t experts = 0;
  bool sigmoid = false;
  bool noaux_tc = false;
  bool group_limited = false;
  int64_t num_groups = 1;
  int64_t topk_groups = 1;
  int64_t top_k = 1;
  bool normalize = false;
  float scaling = 1.0f;
};
constexpr int64_t kMaxRouterExperts = 4096;

// Per token t: scores = sigmoid or softmax of logits[t, :]; selection values
// = scores (+ bias when not null); with group ranking (noaux_tc: sum of the
// two best selection values of a group; group_limited: best score), experts
// outside the best topk_groups groups are masked to -inf; the top_k
// selection values (ties to the lower index) give ids[t, :] in descending
// order and weights[t, :] = their scores, normalized if asked, times scaling.
// Exactly kernels/cpu's RouteToken.
cudaError_t MoeRoute(const float* logits, const float* bias, const RouterParams& params, int32_t* ids,
                     float* weights, cudaStream_t stream);

// out[t, :] = sum over j in [offsets[t], offsets[t + 1]) of
// weights[weight_index[j]] * y[y_row[j], :], in float32 in that order (zero
// for a token without entries); every row of out is written.
cudaError_t MoeCombine(const __nv_bfloat16* y, const float* weights, const int32_t* offsets, const int32_t* y_row,
                       const int32_t* weight_index, int64_t rows, int64_t dim, __nv_bfloat16* out,
                       cudaStream_t stream);

}  // namespace mlaserve::cuda

#endif  // MLASERVE_KERNELS_CUDA_MOE_H_
