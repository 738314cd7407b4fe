// Memory-bound kernels of the CUDA backend on raw device pointers: row
// gathers (embedding), RoPE, elementwise add and SiLU-gating, row scatter-add,
// latent-cache writes and reads, fills and dtype conversions. Every kernel
// computes a row's values from that row's inputs only (no reduction across
// rows), so results never depend on how many rows share a launch.
// Arithmetic is float32; bf16 values are rounded once when stored.
// kernels/cuda/cuda_ops.cc checks shapes and ids and calls these.
#ifndef MLASERVE_KERNELS_CUDA_ELEMENTWISE_H_
#define MLASERVE_KERNELS_CUDA_ELEMENTWISE_H_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mlaserve::cuda {

// out[i] = table[ids[i]] for `rows` rows of `row_bytes` bytes (any dtype).
cudaError_t GatherRows(const void* table, const int32_t* ids, int64_t rows, int64_t row_bytes, void* out,
                       cudaStream_t stream);

// Rotary embedding parameters, passed by value to the kernel (no upload).
constexpr int kMaxRopePairs = 256;
struct RopeParams {
  int64_t rows = 0;
  int64_t heads = 0;
  int64_t dim = 0;  // rope_dim, even, at most 2 * kMaxRopePairs
  bool interleaved = true;
  float attention_factor = 1.0f;
  float inv_freq[kMaxRopePairs] = {};
};
// Rotates x[rows, heads, dim] in place at positions[rows]: angle =
// float(position) * inv_freq[i] in float32, cos/sin times attention_factor.
cudaError_t Rope(__nv_bfloat16* x, const int32_t* positions, const RopeParams& params, cudaStream_t stream);

// a += b over n values.
cudaError_t Add(__nv_bfloat16* a, const __nv_bfloat16* b, int64_t n, cudaStream_t stream);
cudaError_t Add(float* a, const float* b, int64_t n, cudaStream_t stream);

// out[r, i] = silu(x[r, i]) * x[r, inner + i], x is [rows, 2 * inner].
cudaError_t SiluMul(const __nv_bfloat16* x, int64_t rows, int64_t inner, __nv_bfloat16* out, cudaStream_t stream);

// Deterministic scatter-add with repeated destinations: for each u in
// [0, num_dst), dst[dst_rows[u]] += sum of src[src_index[j]] for j in
// [offsets[u], offsets[u + 1]), summed in float32 in that order and rounded
// once. dst_rows must be distinct (the caller groups repeats).
cudaError_t AddRowsGrouped(const __nv_bfloat16* src, const int32_t* dst_rows, const int32_t* offsets,
                           const int32_t* src_index, int64_t num_dst, int64_t dim, __nv_bfloat16* dst,
                           cudaStream_t stream);
cudaError_t AddRowsGrouped(const float* src, const int32_t* dst_rows, const int32_t* offsets,
                           const int32_t* src_index, int64_t num_dst, int64_t dim, float* dst, cudaStream_t stream);

// Geometry of the paged latent cache [num_blocks, layers, block_size, rank + rope].
struct LatentCacheGeometry {
  int64_t layers = 0;
  int64_t block_size = 0;
  int64_t rank = 0;
  int64_t rope = 0;
  int64_t layer = 0;
};
// cache row of slots[t] (block = slot / block_size) at `layer` = c_kv[t] ++
// k_rope[t]; a negative slot (a row another rank holds) is skipped.
cudaError_t WriteLatentCache(const __nv_bfloat16* c_kv, const __nv_bfloat16* k_rope, const int64_t* slots,
                             int64_t rows, const LatentCacheGeometry& geometry, __nv_bfloat16* cache,
                             cudaStream_t stream);
// c_kv[p], k_rope[p] = the cache row of position p (block block_table[p / block_size]).
cudaError_t GatherLatent(const __nv_bfloat16* cache, const int32_t* block_table, int64_t num_positions,
                         const LatentCacheGeometry& geometry, __nv_bfloat16* c_kv, __nv_bfloat16* k_rope,
                         cudaStream_t stream);

// The same into and out of an FP8 cache (kernels/latent_row.h): rows of
// `row.bytes` bytes, c_kv's e4m3 values first, their float32 scales at byte
// `row.scales_at`, k_rope (bf16) at `row.rope_at`. Writing quantizes each
// 128 values of c_kv by FP8 activations' rule (QuantizeFp8Rows); gathering
// reads back bf16(e4m3 * scale), as the attention kernels do.
// REQUIRES: geometry.rank % 16 == 0.
struct Fp8RowLayout {
  int64_t bytes = 0;
  int64_t scales_at = 0;
  int64_t rope_at = 0;
};
cudaError_t WriteLatentCacheFp8(const __nv_bfloat16* c_kv, const __nv_bfloat16* k_rope, const int64_t* slots,
                                int64_t rows, const LatentCacheGeometry& geometry, const Fp8RowLayout& row,
                                uint8_t* cache, cudaStream_t stream);
cudaError_t GatherLatentFp8(const uint8_t* cache, const int32_t* block_table, int64_t num_positions,
                            const LatentCacheGeometry& geometry, const Fp8RowLayout& row, __nv_bfloat16* c_kv,
                            __nv_bfloat16* k_rope, cudaStream_t stream);

// Sets n elements of 2 or 4 bytes to the given bit pattern.
cudaError_t Fill16(uint16_t* dst, int64_t n, uint16_t bits, cudaStream_t stream);
cudaError_t Fill32(uint32_t* dst, int64_t n, uint32_t bits, cudaStream_t stream);

// dst[i] = mean + stddev * RandomNormal(seed, i) (kernels/random_normal.h,
// the same counter-based stream as the CPU backend), rounded to dst's dtype.
cudaError_t FillRandom(__nv_bfloat16* dst, int64_t n, uint64_t seed, float mean, float stddev, cudaStream_t stream);
cudaError_t FillRandom(float* dst, int64_t n, uint64_t seed, float mean, float stddev, cudaStream_t stream);

// dtype conversions over n values (bf16 rounding: nearest even).
cudaError_t Bf16ToF32(const __nv_bfloat16* src, int64_t n, float* dst, cudaStream_t stream);
cudaError_t F32ToBf16(const float* src, int64_t n, __nv_bfloat16* dst, cudaStream_t stream);

}  // namespace mlaserve::cuda

#endif  // MLASERVE_KERNELS_CUDA_ELEMENTWISE_H_
