// The absorbed kernel for any rank and rope (small test models): one CTA per
// (row, split) on CUDA cores.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/mla/device.cuh"
#include "kernels/cuda/mla/launch.h"

namespace mlaserve::cuda::mla {
namespace {

// Any rank and rope: one CTA per (row, split) on CUDA cores; a warp per key for the
// scores, a thread per output column for the weighted sum. For small test models.

// Dim d of the cache row at `row` (an element offset in a bf16 cache, a byte
// offset in an FP8 one, whose values dequantize as the tensor-core kernels').
template <bool kFp8>
__device__ __forceinline__ float CacheValue(const MlaAbsorbedParams& p, int64_t row, int d) {
  if constexpr (kFp8) {
    const uint8_t* bytes = p.fp8_cache + row;
    if (d >= p.rank) return __bfloat162float(reinterpret_cast<const bf16*>(bytes + p.fp8_rope_at)[d - p.rank]);
    const float scale = reinterpret_cast<const float*>(bytes + p.fp8_scales_at)[d / 128];
    return __bfloat162float(DequantFp8(bytes[d], scale));  // bf16(e4m3 * scale), as the tiles land
  } else {
    return __bfloat162float(p.cache[row + d]);
  }
}

template <bool kFp8>
__global__ void __launch_bounds__(kGenericThreads)
    MlaAbsorbedGenericKernel(const MlaWorkItem* __restrict__ items, const MlaAbsorbedParams p) {
  extern __shared__ __align__(128) uint8_t smem[];
  const int dims = p.rank + p.rope;
  int64_t* const s_row = reinterpret_cast<int64_t*>(smem);                      // [kMlaGenericMaxKeys]
  float* const s_score = reinterpret_cast<float*>(s_row + kMlaGenericMaxKeys);  // [kMlaGenericMaxKeys]
  float* const s_red = s_score + kMlaGenericMaxKeys;                            // [32]
  float* const s_q = s_red + 32;                                                // [dims]

  const MlaWorkItem item = items[blockIdx.x];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t row = item.q_row;
  for (int d = tid; d < dims; d += kGenericThreads) {
    s_q[d] = __bfloat162float(d < p.rank ? p.q_latent[row * p.rank + d] : p.q_rope[row * p.rope + d - p.rank]);
  }
  const int limit = min(item.prefix + item.seq_row / p.heads + 1, item.key_end);
  const int n = max(limit - item.key_begin, 0);
  const float sl2 = p.softmax_scale * kLog2e;
  __syncthreads();
  for (int j = warp; j < n; j += kGenericThreads / 32) {
    const int key = item.key_begin + j;
    const int block = p.block_tables[item.table + key / p.block_size];
    const int64_t offset = ((static_cast<int64_t>(block) * p.layers + p.layer) * p.block_size + key % p.block_size) *
                           (kFp8 ? p.fp8_row_bytes : dims);
    float dot = 0.0f;
    for (int d = lane; d < dims; d += 32) dot += s_q[d] * CacheValue<kFp8>(p, offset, d);
    for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffff, dot, off);
    if (lane == 0) {
      s_row[j] = offset;
      s_score[j] = dot * sl2;
    }
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int j = tid; j < n; j += kGenericThreads) mx = fmaxf(mx, s_score[j]);
  mx = BlockReduce(mx, s_red, true);
  float sum = 0.0f;
  for (int j = tid; j < n; j += kGenericThreads) {
    const float e = exp2f(s_score[j] - mx);
    s_score[j] = e;
    sum += e;
  }
  sum = BlockReduce(sum, s_red, false);  // (its barriers also publish s_score)
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int d = tid; d < p.rank; d += kGenericThreads) {
    float acc = 0.0f;
    for (int j = 0; j < n; ++j) acc += s_score[j] * CacheValue<kFp8>(p, s_row[j], d);
    if (item.partial < 0) {
      p.out[row * p.rank + d] = __float2bfloat16(acc * inv);
    } else {
      p.partial_out[static_cast<int64_t>(item.partial) * p.rank + d] = acc * inv;
    }
  }
  if (item.partial >= 0 && tid == 0) p.partial_lse[item.partial] = sum > 0.0f ? mx + log2f(sum) : -INFINITY;
}

}  // namespace

cudaError_t LaunchAbsorbedGeneric(const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params,
                                  cudaStream_t stream) {
  if (params.rank + params.rope > kMlaGenericMaxDims) return cudaErrorInvalidValue;
  static std::atomic<uint64_t> done{0};
  constexpr int kMaxSmem = kMlaGenericMaxKeys * (8 + 4) + 32 * 4 + kMlaGenericMaxDims * 4;
  const int smem = kMlaGenericMaxKeys * (8 + 4) + 32 * 4 + (params.rank + params.rope) * 4;
  static std::atomic<uint64_t> done_fp8{0};
  const bool fp8 = params.fp8_cache != nullptr;
  auto* kernel = fp8 ? &MlaAbsorbedGenericKernel<true> : &MlaAbsorbedGenericKernel<false>;
  cudaError_t err = AllowSmem(reinterpret_cast<const void*>(kernel), kMaxSmem, fp8 ? done_fp8 : done);
  if (err != cudaSuccess) return err;
  kernel<<<num_items, kGenericThreads, smem, stream>>>(items, params);
  return cudaGetLastError();
}

}  // namespace mlaserve::cuda::mla
