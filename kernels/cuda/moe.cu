#include "kernels/cuda/moe.h"

#include <algorithm>
#include <climits>

#include "kernels/cuda/ptx.h"
#include "kernels/cuda/rank_order.h"

namespace mlaserve::cuda {
namespace {

__device__ __forceinline__ float WarpMax(float value) {
  for (int offset = 16; offset > 0; offset /= 2) value = fmaxf(value, __shfl_xor_sync(0xffffffff, value, offset));
  return value;
}

__device__ __forceinline__ double WarpSum(double value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffff, value, offset);
  return value;
}

// One warp per token. Shared memory: scores[E], choice[E], group_score[G]
// (floats), then taken[E], keep[G] (bytes).
__global__ void __launch_bounds__(32) RouteKernel(const float* logits, const float* bias, const RouterParams p,
                                                  int32_t* ids, float* weights) {
  extern __shared__ float smem[];
  const int E = static_cast<int>(p.experts), G = static_cast<int>(p.num_groups), lane = threadIdx.x;
  float* scores = smem;
  float* choice = scores + E;
  float* group_score = choice + E;
  unsigned char* taken = reinterpret_cast<unsigned char*>(group_score + G);
  unsigned char* keep = taken + E;
  const int64_t t = blockIdx.x;
  const float* row = logits + t * E;

  if (p.sigmoid) {
    for (int e = lane; e < E; e += 32) scores[e] = 1.0f / (1.0f + expf(-row[e]));
  } else {
    float max_logit = -INFINITY;
    for (int e = lane; e < E; e += 32) max_logit = fmaxf(max_logit, row[e]);
    max_logit = WarpMax(max_logit);
    double sum = 0.0;
    for (int e = lane; e < E; e += 32) {
      scores[e] = expf(row[e] - max_logit);
      sum += scores[e];
    }
    sum = WarpSum(sum);
    for (int e = lane; e < E; e += 32) scores[e] = static_cast<float>(scores[e] / sum);
  }
  for (int e = lane; e < E; e += 32) {
    choice[e] = bias != nullptr ? scores[e] + bias[e] : scores[e];
    taken[e] = 0;
  }
  __syncwarp();

  if ((p.noaux_tc || p.group_limited) && G > 1) {
    const int group_size = E / G;
    for (int g = lane; g < G; g += 32) {
      keep[g] = 0;
      if (p.noaux_tc) {
        // Sum of the two best selection values of the group.
        const float* in_group = choice + g * group_size;
        float v1 = -INFINITY, v2 = -INFINITY;
        int i1 = INT_MAX, i2 = INT_MAX;
        for (int e = 0; e < group_size; ++e) {
          if (Better(in_group[e], e, v1, i1)) {
            v2 = v1, i2 = i1;
            v1 = in_group[e], i1 = e;
          } else if (Better(in_group[e], e, v2, i2)) {
            v2 = in_group[e], i2 = e;
          }
        }
        float sum = 0.0f;
        sum += v1;
        if (group_size >= 2) sum += v2;
        group_score[g] = sum;
      } else {
        const float* in_group = scores + g * group_size;
        float best = in_group[0];
        for (int e = 1; e < group_size; ++e) best = fmaxf(best, in_group[e]);
        group_score[g] = best;
      }
    }
    __syncwarp();
    if (lane == 0) {
      for (int k = 0; k < p.topk_groups; ++k) {
        float best = -INFINITY;
        int best_g = INT_MAX;
        for (int g = 0; g < G; ++g) {
          if (!keep[g] && Better(group_score[g], g, best, best_g)) best = group_score[g], best_g = g;
        }
        if (best_g < G) keep[best_g] = 1;
      }
    }
    __syncwarp();
    for (int e = lane; e < E; e += 32) {
      if (!keep[e / group_size]) choice[e] = -INFINITY;
    }
    __syncwarp();
  }

  int32_t* out_ids = ids + t * p.top_k;
  for (int k = 0; k < p.top_k; ++k) {
    float best = -INFINITY;
    int best_e = INT_MAX;
    for (int e = lane; e < E; e += 32) {
      if (!taken[e] && Better(choice[e], e, best, best_e)) best = choice[e], best_e = e;
    }
    WarpArgMax(best, best_e);
    if (lane == 0) {
      out_ids[k] = best_e;
      taken[best_e] = 1;
    }
    __syncwarp();
  }

  if (lane == 0) {
    float* out_weights = weights + t * p.top_k;
    float sum = 0.0f;
    for (int k = 0; k < p.top_k; ++k) {
      out_weights[k] = scores[out_ids[k]];
      sum += out_weights[k];
    }
    for (int k = 0; k < p.top_k; ++k) {
      if (p.normalize) out_weights[k] /= sum + 1e-20f;
      out_weights[k] *= p.scaling;
    }
  }
}

__global__ void CombineKernel(const __nv_bfloat16* y, const float* weights, const int32_t* pair_of, int64_t top_k,
                              int64_t dim, __nv_bfloat16* out) {
  const int64_t t = blockIdx.x;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    float acc = 0.0f;
    for (int64_t k = 0; k < top_k; ++k) {
      const int32_t pair = pair_of[t * top_k + k];
      if (pair >= 0) acc += weights[t * top_k + k] * __bfloat162float(y[static_cast<int64_t>(pair) * dim + j]);
    }
    out[t * dim + j] = __float2bfloat16(acc);
  }
}

// ------------------------------------------------------------------ pair grouping

constexpr int kGroupThreads = 1024;

// Shared memory: count[local_experts], begin[local_experts].
__global__ void __launch_bounds__(kGroupThreads)
    GroupPairsKernel(const int32_t* ids, int num_pairs, int top_k, int first_expert, int local_experts,
                     int tile_pairs, int32_t* pair_token, int32_t* pair_of, ExpertTile* tiles, int32_t* num_tiles) {
  extern __shared__ int32_t group_smem[];
  int32_t* count = group_smem;
  int32_t* begin = count + local_experts;
  for (int e = threadIdx.x; e < local_experts; e += blockDim.x) count[e] = 0;
  __syncthreads();
  for (int j = threadIdx.x; j < num_pairs; j += blockDim.x) {
    const int e = ids[j] - first_expert;
    if (e >= 0 && e < local_experts) {
      atomicAdd(&count[e], 1);  // a count: the order of the additions does not matter
    } else {
      pair_of[j] = -1;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int pairs = 0, n = 0;
    for (int e = 0; e < local_experts; ++e) {
      begin[e] = pairs;
      for (int b = pairs; b < pairs + count[e]; b += tile_pairs) {
        tiles[n++] = ExpertTile{e, b, min(b + tile_pairs, pairs + count[e]), 0};
      }
      pairs += count[e];
    }
    *num_tiles = n;
  }
  __syncthreads();
  // A warp per expert lays out its pairs in (t, k) order, 32 pairs per ballot.
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int e = warp; e < local_experts; e += kGroupThreads / 32) {
    int next = begin[e];
    for (int base = 0; base < num_pairs; base += 32) {
      const int j = base + lane;
      const bool mine = j < num_pairs && ids[j] - first_expert == e;
      const unsigned ballot = __ballot_sync(0xffffffff, mine);
      if (mine) {
        const int p = next + __popc(ballot & ((1u << lane) - 1));
        pair_token[p] = j / top_k;
        pair_of[j] = p;
      }
      next += __popc(ballot);
    }
  }
}

}  // namespace

cudaError_t MoeRoute(const float* logits, const float* bias, const RouterParams& params, int32_t* ids,
                     float* weights, cudaStream_t stream) {
  if (params.rows == 0) return cudaSuccess;
  if (params.experts <= 0 || params.experts > kMaxRouterExperts || params.num_groups <= 0 ||
      params.experts % params.num_groups != 0 || params.top_k > params.experts || params.top_k <= 0) {
    return cudaErrorInvalidValue;
  }
  const size_t smem = sizeof(float) * (2 * params.experts + params.num_groups) + params.experts + params.num_groups;
  RouteKernel<<<static_cast<unsigned>(params.rows), 32, smem, stream>>>(logits, bias, params, ids, weights);
  return cudaGetLastError();
}

cudaError_t MoeGroupPairs(const int32_t* ids, int64_t rows, int64_t top_k, int64_t first_expert,
                          int64_t local_experts, int64_t tile_pairs, int32_t* pair_token, int32_t* pair_of,
                          ExpertTile* tiles, int32_t* num_tiles, cudaStream_t stream) {
  if (local_experts <= 0 || local_experts > kMaxRouterExperts || rows * top_k > INT_MAX) return cudaErrorInvalidValue;
  const size_t smem = 2 * sizeof(int32_t) * local_experts;
  GroupPairsKernel<<<1, kGroupThreads, smem, stream>>>(ids, static_cast<int>(rows * top_k), static_cast<int>(top_k),
                                                       static_cast<int>(first_expert), static_cast<int>(local_experts),
                                                       static_cast<int>(tile_pairs), pair_token, pair_of, tiles,
                                                       num_tiles);
  return cudaGetLastError();
}

cudaError_t MoeCombine(const __nv_bfloat16* y, const float* weights, const int32_t* pair_of, int64_t rows,
                       int64_t top_k, int64_t dim, __nv_bfloat16* out, cudaStream_t stream) {
  if (rows == 0 || dim == 0) return cudaSuccess;
  CombineKernel<<<static_cast<unsigned>(rows), dim >= 256 ? 256 : 64, 0, stream>>>(y, weights, pair_of, top_k, dim,
                                                                                   out);
  return cudaGetLastError();
}

}  // namespace mlaserve::cuda
