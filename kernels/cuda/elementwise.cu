#include "kernels/cuda/elementwise.h"

#include <cuda_fp8.h>

#include "kernels/cuda/fp8_latent.cuh"
#include "kernels/random_normal.h"

namespace mlaserve::cuda {
namespace {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements.
unsigned GridFor(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 65536) blocks = 65536;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

__device__ __forceinline__ float ToF32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToF32(float v) { return v; }
template <typename T>
__device__ __forceinline__ T FromF32(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 FromF32<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ float FromF32<float>(float v) {
  return v;
}

// ---- Row gather ----

template <typename W>
__global__ void GatherRowsKernel(const W* table, const int32_t* ids, int64_t words, W* out) {
  const int64_t row = blockIdx.x;
  const W* src = table + static_cast<int64_t>(ids[row]) * words;
  W* dst = out + row * words;
  for (int64_t i = threadIdx.x; i < words; i += blockDim.x) dst[i] = src[i];
}

template <typename W>
cudaError_t LaunchGather(const void* table, const int32_t* ids, int64_t rows, int64_t row_bytes, void* out,
                         cudaStream_t stream) {
  const int64_t words = row_bytes / static_cast<int64_t>(sizeof(W));
  const int threads = words >= 256 ? 256 : (words >= 64 ? 128 : 32);
  GatherRowsKernel<W><<<static_cast<unsigned>(rows), threads, 0, stream>>>(static_cast<const W*>(table), ids, words,
                                                                           static_cast<W*>(out));
  return cudaGetLastError();
}

// ---- RoPE ----

__global__ void RopeKernel(__nv_bfloat16* x, const int32_t* positions, const RopeParams p) {
  __shared__ float cos_s[kMaxRopePairs], sin_s[kMaxRopePairs];
  const int64_t row = blockIdx.x, half = p.dim / 2;
  const float position = static_cast<float>(positions[row]);
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    // Accurate sincosf (no fast math): float32 angle as transformers computes it.
    const float angle = position * p.inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    cos_s[i] = c * p.attention_factor;
    sin_s[i] = s * p.attention_factor;
  }
  __syncthreads();
  __nv_bfloat16* base = x + row * p.heads * p.dim;
  for (int64_t idx = threadIdx.x; idx < p.heads * half; idx += blockDim.x) {
    const int64_t h = idx / half, i = idx % half;
    __nv_bfloat16* v = base + h * p.dim;
    const int64_t ia = p.interleaved ? 2 * i : i;
    const int64_t ib = p.interleaved ? 2 * i + 1 : i + half;
    const float a0 = __bfloat162float(v[ia]), b0 = __bfloat162float(v[ib]);
    v[ia] = __float2bfloat16(a0 * cos_s[i] - b0 * sin_s[i]);
    v[ib] = __float2bfloat16(b0 * cos_s[i] + a0 * sin_s[i]);
  }
}

// ---- Elementwise ----

template <typename T>
__global__ void AddKernel(T* a, const T* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    a[i] = FromF32<T>(ToF32(a[i]) + ToF32(b[i]));
  }
}

// a += b for bf16, 8 values (16 bytes) per load: the same float32 sums and
// roundings as AddKernel at full memory width.
__global__ void AddBf16x8Kernel(__nv_bfloat16* a, const __nv_bfloat16* b, int64_t n8) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n8; i += int64_t{gridDim.x} * blockDim.x) {
    uint4 va = reinterpret_cast<const uint4*>(a)[i];
    const uint4 vb = reinterpret_cast<const uint4*>(b)[i];
    __nv_bfloat162* pa = reinterpret_cast<__nv_bfloat162*>(&va);
    const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&vb);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 x = __bfloat1622float2(pa[j]), y = __bfloat1622float2(pb[j]);
      pa[j] = __floats2bfloat162_rn(x.x + y.x, x.y + y.y);
    }
    reinterpret_cast<uint4*>(a)[i] = va;
  }
}

__global__ void SiluMulKernel(const __nv_bfloat16* x, int64_t rows, int64_t inner, __nv_bfloat16* out) {
  const int64_t n = rows * inner;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < n; idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = idx / inner, i = idx % inner;
    const float g = __bfloat162float(x[r * 2 * inner + i]);
    const float u = __bfloat162float(x[r * 2 * inner + inner + i]);
    out[idx] = __float2bfloat16(g / (1.0f + expf(-g)) * u);
  }
}

template <typename T>
__global__ void AddRowsGroupedKernel(const T* src, const int32_t* dst_rows, const int32_t* offsets,
                                     const int32_t* src_index, int64_t dim, T* dst) {
  const int64_t u = blockIdx.x;
  T* row = dst + static_cast<int64_t>(dst_rows[u]) * dim;
  const int32_t begin = offsets[u], end = offsets[u + 1];
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    float acc = ToF32(row[j]);
    for (int32_t s = begin; s < end; ++s) acc += ToF32(src[static_cast<int64_t>(src_index[s]) * dim + j]);
    row[j] = FromF32<T>(acc);
  }
}

template <typename T>
cudaError_t LaunchAddRows(const T* src, const int32_t* dst_rows, const int32_t* offsets, const int32_t* src_index,
                          int64_t num_dst, int64_t dim, T* dst, cudaStream_t stream) {
  if (num_dst == 0 || dim == 0) return cudaSuccess;
  AddRowsGroupedKernel<T><<<static_cast<unsigned>(num_dst), dim >= 256 ? 256 : 64, 0, stream>>>(
      src, dst_rows, offsets, src_index, dim, dst);
  return cudaGetLastError();
}

// ---- Latent cache ----

__device__ __forceinline__ int64_t CacheRowOffset(const LatentCacheGeometry& g, int64_t block, int64_t offset) {
  return ((block * g.layers + g.layer) * g.block_size + offset) * (g.rank + g.rope);
}

__global__ void WriteLatentKernel(const __nv_bfloat16* c_kv, const __nv_bfloat16* k_rope, const int64_t* slots,
                                  const LatentCacheGeometry g, __nv_bfloat16* cache) {
  const int64_t t = blockIdx.x, slot = slots[t];
  if (slot < 0) return;  // a row another rank holds (kSlotElsewhere)
  __nv_bfloat16* row = cache + CacheRowOffset(g, slot / g.block_size, slot % g.block_size);
  for (int64_t j = threadIdx.x; j < g.rank + g.rope; j += blockDim.x) {
    row[j] = j < g.rank ? c_kv[t * g.rank + j] : k_rope[t * g.rope + (j - g.rank)];
  }
}

__global__ void GatherLatentKernel(const __nv_bfloat16* cache, const int32_t* block_table,
                                   const LatentCacheGeometry g, __nv_bfloat16* c_kv, __nv_bfloat16* k_rope) {
  const int64_t p = blockIdx.x;
  const __nv_bfloat16* row = cache + CacheRowOffset(g, block_table[p / g.block_size], p % g.block_size);
  for (int64_t j = threadIdx.x; j < g.rank + g.rope; j += blockDim.x) {
    if (j < g.rank) {
      c_kv[p * g.rank + j] = row[j];
    } else {
      k_rope[p * g.rope + (j - g.rank)] = row[j];
    }
  }
}

__device__ __forceinline__ uint8_t* Fp8CacheRow(uint8_t* cache, const LatentCacheGeometry& g, const Fp8RowLayout& l,
                                                int64_t block, int64_t offset) {
  return cache + ((block * g.layers + g.layer) * g.block_size + offset) * l.bytes;
}

// One CTA of kFp8Threads per row: warp w quantizes c_kv's 128-value groups w,
// w + 4, ... (4 values a lane, as QuantizeFp8Rows), then k_rope is copied.
constexpr int kFp8Threads = 128;
__global__ void WriteLatentFp8Kernel(const __nv_bfloat16* c_kv, const __nv_bfloat16* k_rope, const int64_t* slots,
                                     const LatentCacheGeometry g, const Fp8RowLayout l, uint8_t* cache) {
  const int64_t t = blockIdx.x, slot = slots[t];
  if (slot < 0) return;  // a row another rank holds (kSlotElsewhere)
  uint8_t* row = Fp8CacheRow(cache, g, l, slot / g.block_size, slot % g.block_size);
  const int lane = threadIdx.x % 32;
  const int64_t groups = (g.rank + 127) / 128;
  for (int64_t group = threadIdx.x / 32; group < groups; group += kFp8Threads / 32) {
    const int64_t col = group * 128 + lane * 4;
    const bool mine = col < g.rank;  // rank is a multiple of 16: a lane's 4 values are all in or all out
    float v[4] = {};
    float amax = 0.0f;
    if (mine) {
      for (int i = 0; i < 4; ++i) {
        v[i] = __bfloat162float(c_kv[t * g.rank + col + i]);
        amax = fmaxf(amax, fabsf(v[i]));
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, offset));
    const float scale = fmaxf(amax, 1e-4f) / 448.0f;
    if (mine) {
      uint32_t packed = 0;
      for (int i = 0; i < 4; ++i) {
        packed |= static_cast<uint32_t>(__nv_cvt_float_to_fp8(v[i] / scale, __NV_SATFINITE, __NV_E4M3)) << (8 * i);
      }
      *reinterpret_cast<uint32_t*>(row + col) = packed;
    }
    if (lane == 0) reinterpret_cast<float*>(row + l.scales_at)[group] = scale;
  }
  for (int64_t j = threadIdx.x; j < g.rope; j += kFp8Threads) {
    reinterpret_cast<__nv_bfloat16*>(row + l.rope_at)[j] = k_rope[t * g.rope + j];
  }
}

__global__ void GatherLatentFp8Kernel(const uint8_t* cache, const int32_t* block_table, const LatentCacheGeometry g,
                                      const Fp8RowLayout l, __nv_bfloat16* c_kv, __nv_bfloat16* k_rope) {
  const int64_t p = blockIdx.x;
  const uint8_t* row = Fp8CacheRow(const_cast<uint8_t*>(cache), g, l, block_table[p / g.block_size], p % g.block_size);
  const float* scales = reinterpret_cast<const float*>(row + l.scales_at);
  for (int64_t j = threadIdx.x; j < g.rank + g.rope; j += blockDim.x) {
    if (j < g.rank) {
      c_kv[p * g.rank + j] = DequantFp8(row[j], scales[j / 128]);
    } else {
      k_rope[p * g.rope + (j - g.rank)] = reinterpret_cast<const __nv_bfloat16*>(row + l.rope_at)[j - g.rank];
    }
  }
}

// ---- Fill and conversions ----

template <typename W>
__global__ void FillKernel(W* dst, int64_t n, W bits) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = bits;
  }
}

template <typename T>
__global__ void FillRandomKernel(T* dst, int64_t n, uint64_t seed, float mean, float stddev) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    // No fused multiply-add: the CPU computes mean + stddev * r with two roundings.
    dst[i] = FromF32<T>(__fadd_rn(mean, __fmul_rn(stddev, RandomNormal(seed, static_cast<uint64_t>(i)))));
  }
}

__global__ void Bf16ToF32Kernel(const __nv_bfloat16* src, int64_t n, float* dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = __bfloat162float(src[i]);
  }
}

__global__ void F32ToBf16Kernel(const float* src, int64_t n, __nv_bfloat16* dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = __float2bfloat16(src[i]);
  }
}

}  // namespace

cudaError_t GatherRows(const void* table, const int32_t* ids, int64_t rows, int64_t row_bytes, void* out,
                       cudaStream_t stream) {
  if (rows == 0 || row_bytes == 0) return cudaSuccess;
  const uintptr_t align = reinterpret_cast<uintptr_t>(table) | reinterpret_cast<uintptr_t>(out) |
                          static_cast<uintptr_t>(row_bytes);
  if (align % 16 == 0) return LaunchGather<uint4>(table, ids, rows, row_bytes, out, stream);
  if (align % 8 == 0) return LaunchGather<uint2>(table, ids, rows, row_bytes, out, stream);
  if (align % 4 == 0) return LaunchGather<uint32_t>(table, ids, rows, row_bytes, out, stream);
  if (align % 2 == 0) return LaunchGather<uint16_t>(table, ids, rows, row_bytes, out, stream);
  return LaunchGather<uint8_t>(table, ids, rows, row_bytes, out, stream);
}

cudaError_t Rope(__nv_bfloat16* x, const int32_t* positions, const RopeParams& params, cudaStream_t stream) {
  if (params.rows == 0 || params.heads == 0 || params.dim == 0) return cudaSuccess;
  if (params.dim % 2 != 0 || params.dim / 2 > kMaxRopePairs) return cudaErrorInvalidValue;
  RopeKernel<<<static_cast<unsigned>(params.rows), 128, 0, stream>>>(x, positions, params);
  return cudaGetLastError();
}

cudaError_t Add(__nv_bfloat16* a, const __nv_bfloat16* b, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vectors = n % 8 == 0 && (reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b)) % 16 == 0;
  if (vectors) {
    AddBf16x8Kernel<<<GridFor(n / 8), kThreads, 0, stream>>>(a, b, n / 8);
    return cudaGetLastError();
  }
  AddKernel<<<GridFor(n), kThreads, 0, stream>>>(a, b, n);
  return cudaGetLastError();
}

cudaError_t Add(float* a, const float* b, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  AddKernel<<<GridFor(n), kThreads, 0, stream>>>(a, b, n);
  return cudaGetLastError();
}

cudaError_t SiluMul(const __nv_bfloat16* x, int64_t rows, int64_t inner, __nv_bfloat16* out, cudaStream_t stream) {
  if (rows * inner == 0) return cudaSuccess;
  SiluMulKernel<<<GridFor(rows * inner), kThreads, 0, stream>>>(x, rows, inner, out);
  return cudaGetLastError();
}

cudaError_t AddRowsGrouped(const __nv_bfloat16* src, const int32_t* dst_rows, const int32_t* offsets,
                           const int32_t* src_index, int64_t num_dst, int64_t dim, __nv_bfloat16* dst,
                           cudaStream_t stream) {
  return LaunchAddRows(src, dst_rows, offsets, src_index, num_dst, dim, dst, stream);
}

cudaError_t AddRowsGrouped(const float* src, const int32_t* dst_rows, const int32_t* offsets,
                           const int32_t* src_index, int64_t num_dst, int64_t dim, float* dst, cudaStream_t stream) {
  return LaunchAddRows(src, dst_rows, offsets, src_index, num_dst, dim, dst, stream);
}

cudaError_t WriteLatentCache(const __nv_bfloat16* c_kv, const __nv_bfloat16* k_rope, const int64_t* slots,
                             int64_t rows, const LatentCacheGeometry& geometry, __nv_bfloat16* cache,
                             cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  WriteLatentKernel<<<static_cast<unsigned>(rows), 128, 0, stream>>>(c_kv, k_rope, slots, geometry, cache);
  return cudaGetLastError();
}

cudaError_t GatherLatent(const __nv_bfloat16* cache, const int32_t* block_table, int64_t num_positions,
                         const LatentCacheGeometry& geometry, __nv_bfloat16* c_kv, __nv_bfloat16* k_rope,
                         cudaStream_t stream) {
  if (num_positions == 0) return cudaSuccess;
  GatherLatentKernel<<<static_cast<unsigned>(num_positions), 128, 0, stream>>>(cache, block_table, geometry, c_kv,
                                                                               k_rope);
  return cudaGetLastError();
}

cudaError_t WriteLatentCacheFp8(const __nv_bfloat16* c_kv, const __nv_bfloat16* k_rope, const int64_t* slots,
                                int64_t rows, const LatentCacheGeometry& geometry, const Fp8RowLayout& row,
                                uint8_t* cache, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (geometry.rank % 16 != 0) return cudaErrorInvalidValue;
  WriteLatentFp8Kernel<<<static_cast<unsigned>(rows), kFp8Threads, 0, stream>>>(c_kv, k_rope, slots, geometry, row,
                                                                                cache);
  return cudaGetLastError();
}

cudaError_t GatherLatentFp8(const uint8_t* cache, const int32_t* block_table, int64_t num_positions,
                            const LatentCacheGeometry& geometry, const Fp8RowLayout& row, __nv_bfloat16* c_kv,
                            __nv_bfloat16* k_rope, cudaStream_t stream) {
  if (num_positions == 0) return cudaSuccess;
  GatherLatentFp8Kernel<<<static_cast<unsigned>(num_positions), 128, 0, stream>>>(cache, block_table, geometry, row,
                                                                                  c_kv, k_rope);
  return cudaGetLastError();
}

cudaError_t Fill16(uint16_t* dst, int64_t n, uint16_t bits, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FillKernel<<<GridFor(n), kThreads, 0, stream>>>(dst, n, bits);
  return cudaGetLastError();
}

cudaError_t Fill32(uint32_t* dst, int64_t n, uint32_t bits, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FillKernel<<<GridFor(n), kThreads, 0, stream>>>(dst, n, bits);
  return cudaGetLastError();
}

cudaError_t FillRandom(__nv_bfloat16* dst, int64_t n, uint64_t seed, float mean, float stddev, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FillRandomKernel<<<GridFor(n), kThreads, 0, stream>>>(dst, n, seed, mean, stddev);
  return cudaGetLastError();
}

cudaError_t FillRandom(float* dst, int64_t n, uint64_t seed, float mean, float stddev, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FillRandomKernel<<<GridFor(n), kThreads, 0, stream>>>(dst, n, seed, mean, stddev);
  return cudaGetLastError();
}

cudaError_t Bf16ToF32(const __nv_bfloat16* src, int64_t n, float* dst, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  Bf16ToF32Kernel<<<GridFor(n), kThreads, 0, stream>>>(src, n, dst);
  return cudaGetLastError();
}

cudaError_t F32ToBf16(const float* src, int64_t n, __nv_bfloat16* dst, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  F32ToBf16Kernel<<<GridFor(n), kThreads, 0, stream>>>(src, n, dst);
  return cudaGetLastError();
}

}  // namespace mlaserve::cuda
