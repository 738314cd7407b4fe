// Mixture-of-experts kernels of the CUDA backend on raw device pointers: the
// router (scores, group-limited selection, top-k, normalization), the
// grouping of (token, expert) pairs by expert into the tiles of the grouped
// GEMMs (grouped_gemm.h), and the weighted combine of expert outputs. Everything stays on the device:
// no routing decision comes back to the host, so an MoE layer costs no
// stream synchronization and its launches do not depend on the routing.
//
// A token's result never depends on its batch: the router and the combine
// read only that token's inputs, and the GEMM computes each output element
// with the same k order in the same MMA shape wherever its row sits.
#ifndef MLASERVE_KERNELS_CUDA_MOE_H_
#define MLASERVE_KERNELS_CUDA_MOE_H_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/grouped_gemm.h"

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

// Groups the pairs (t, k) of ids[rows, top_k] whose expert e = id -
// first_expert is local (0 <= e < local_experts) by expert, in (t, k) order
// within an expert: pair p's token is pair_token[p], pair_of[t * top_k + k]
// is the pair of (t, k) (-1 when not local), and tiles[0, *num_tiles) cover
// the pairs, `tile_pairs` at most each. pair_token and pair_of hold rows *
// top_k entries, tiles MaxExpertTiles(rows * top_k, local_experts,
// tile_pairs). One block: the grouping is small next to the GEMMs it feeds.
cudaError_t MoeGroupPairs(const int32_t* ids, int64_t rows, int64_t top_k, int64_t first_expert,
                          int64_t local_experts, int64_t tile_pairs, int32_t* pair_token, int32_t* pair_of,
                          ExpertTile* tiles, int32_t* num_tiles, cudaStream_t stream);

// out[t, :] = sum over k of weights[t, k] * y[pair_of[t, k], :], skipping
// pairs of -1, in float32 in k order (zero for a token without local pairs);
// every row of out is written.
cudaError_t MoeCombine(const __nv_bfloat16* y, const float* weights, const int32_t* pair_of, int64_t rows,
                       int64_t top_k, int64_t dim, __nv_bfloat16* out, cudaStream_t stream);

}  // namespace mlaserve::cuda

#endif  // MLASERVE_KERNELS_CUDA_MOE_H_
