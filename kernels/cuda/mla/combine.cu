// MlaCombine: merges the splits of the absorbed kernels' tiles.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/mla/device.cuh"

namespace mlaserve::cuda::mla {
namespace {

// One CTA per tile, a warp per row: weights exp2(lse_s - max lse), summed in split
// order (deterministic), then the weighted mean of the normalized partial rows.

__global__ void __launch_bounds__(kCombineThreads)
    MlaCombineKernel(const MlaCombineItem* __restrict__ items, const float* __restrict__ partial_out,
                     const float* __restrict__ partial_lse, int rank, bf16* __restrict__ out) {
  const MlaCombineItem item = items[blockIdx.x];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int r = warp; r < item.num_rows; r += kCombineThreads / 32) {
    float mx = -INFINITY;
    for (int s = lane; s < item.num_splits; s += 32) {
      mx = fmaxf(mx, partial_lse[item.partial + static_cast<int64_t>(s) * item.num_rows + r]);
    }
    for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, off));
    bf16* dst = out + static_cast<int64_t>(item.q_row + r) * rank;
    if (rank % 128 == 0) {
      for (int c0 = 0; c0 < rank; c0 += 512) {
        float4 acc[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);
        float wsum = 0.0f;
        for (int s = 0; s < item.num_splits; ++s) {
          const int64_t prow = item.partial + static_cast<int64_t>(s) * item.num_rows + r;
          const float w = exp2f(partial_lse[prow] - mx);
          wsum += w;
          const float* src = partial_out + prow * rank + c0 + 4 * lane;
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            if (c0 + 128 * i < rank) {
              const float4 v = *reinterpret_cast<const float4*>(src + 128 * i);
              acc[i].x += w * v.x;
              acc[i].y += w * v.y;
              acc[i].z += w * v.z;
              acc[i].w += w * v.w;
            }
          }
        }
        const float inv = 1.0f / wsum;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if (c0 + 128 * i < rank) {
            uint2 packed;
            packed.x = PackBf16(acc[i].x * inv, acc[i].y * inv);
            packed.y = PackBf16(acc[i].z * inv, acc[i].w * inv);
            *reinterpret_cast<uint2*>(dst + c0 + 128 * i + 4 * lane) = packed;
          }
        }
      }
    } else {
      for (int c = lane; c < rank; c += 32) {
        float acc = 0.0f, wsum = 0.0f;
        for (int s = 0; s < item.num_splits; ++s) {
          const int64_t prow = item.partial + static_cast<int64_t>(s) * item.num_rows + r;
          const float w = exp2f(partial_lse[prow] - mx);
          wsum += w;
          acc += w * partial_out[prow * rank + c];
        }
        dst[c] = __float2bfloat16(acc / wsum);
      }
    }
  }
}

// rank 512: one CTA per (tile, row); four groups of 128 threads (a float4 column each)
// take splits g, g + 4, ... with several loads in flight, and the groups' sums are
// added in group order (deterministic).

__global__ void __launch_bounds__(kCombine512Threads)
    MlaCombine512Kernel(const MlaCombineItem* __restrict__ items, const float* __restrict__ partial_out,
                        const float* __restrict__ partial_lse, bf16* __restrict__ out) {
  const MlaCombineItem item = items[blockIdx.x];
  const int r = blockIdx.y;
  if (r >= item.num_rows) return;
  __shared__ float4 s_acc[kCombineGroups - 1][128];
  __shared__ float s_wsum[kCombineGroups - 1];
  __shared__ float s_red[kCombine512Threads / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int group = tid >> 7, col = tid & 127;
  const int64_t base = item.partial + r;
  const int64_t stride = item.num_rows;
  float mx = -INFINITY;
  for (int s = tid; s < item.num_splits; s += kCombine512Threads) mx = fmaxf(mx, partial_lse[base + s * stride]);
  for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, off));
  if (lane == 0) s_red[warp] = mx;
  __syncthreads();
  mx = s_red[0];
#pragma unroll
  for (int w = 1; w < kCombine512Threads / 32; ++w) mx = fmaxf(mx, s_red[w]);

  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  float wsum = 0.0f;
#pragma unroll 4
  for (int s = group; s < item.num_splits; s += kCombineGroups) {
    const int64_t prow = base + s * stride;
    const float w = exp2f(partial_lse[prow] - mx);
    const float4 v = reinterpret_cast<const float4*>(partial_out + prow * kMlaRank)[col];
    wsum += w;
    acc.x += w * v.x;
    acc.y += w * v.y;
    acc.z += w * v.z;
    acc.w += w * v.w;
  }
  if (group > 0) {
    s_acc[group - 1][col] = acc;
    if (col == 0) s_wsum[group - 1] = wsum;
  }
  __syncthreads();
  if (group == 0) {
#pragma unroll
    for (int k = 0; k < kCombineGroups - 1; ++k) {
      const float4 v = s_acc[k][col];
      acc.x += v.x;
      acc.y += v.y;
      acc.z += v.z;
      acc.w += v.w;
      wsum += s_wsum[k];
    }
    const float inv = 1.0f / wsum;
    uint2 packed;
    packed.x = PackBf16(acc.x * inv, acc.y * inv);
    packed.y = PackBf16(acc.z * inv, acc.w * inv);
    reinterpret_cast<uint2*>(out + static_cast<int64_t>(item.q_row + r) * kMlaRank)[col] = packed;
  }
}

}  // namespace
}  // namespace mlaserve::cuda::mla

namespace mlaserve::cuda {

cudaError_t MlaCombine(const MlaCombineItem* items, int num_items, int max_rows, const float* partial_out,
                       const float* partial_lse, int rank, __nv_bfloat16* out, cudaStream_t stream) {
  if (num_items == 0) return cudaSuccess;
  if (rank == kMlaRank && max_rows <= 65535) {
    mla::MlaCombine512Kernel<<<dim3(num_items, max_rows), mla::kCombine512Threads, 0, stream>>>(items, partial_out, partial_lse,
                                                                                      out);
    return cudaGetLastError();
  }
  mla::MlaCombineKernel<<<num_items, mla::kCombineThreads, 0, stream>>>(items, partial_out, partial_lse, rank, out);
  return cudaGetLastError();
}

}  // namespace mlaserve::cuda
