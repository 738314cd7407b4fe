// Device stages shared by the MLA kernels: warp reductions, the swizzled
// shared-memory layouts and their loads through the block table, wgmma
// descriptors and instructions. Internal to kernels/cuda/mla.
#ifndef MLASERVE_KERNELS_CUDA_MLA_DEVICE_CUH_
#define MLASERVE_KERNELS_CUDA_MLA_DEVICE_CUH_

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/fp8_latent.cuh"
#include "kernels/cuda/mla/traits.h"
#include "kernels/cuda/ptx.h"

namespace mlaserve::cuda::mla {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float QuadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffff, v, 2));
}
__device__ __forceinline__ float QuadSum(float v) {
  v += __shfl_xor_sync(0xffffffff, v, 1);
  return v + __shfl_xor_sync(0xffffffff, v, 2);
}

// The online softmax of the two rows a thread holds (g and g + 8 of its warp's
// 16) of a tile of kKeys keys in the m16n8 accumulator layout: score(n, 2 hh +
// e) is row g + 8 hh's score of key key0 + 8 n + 2 t4 + e. Keys past the row's
// last position pos[hh] are masked; P goes into pf as the m16n8k16 A fragments
// of P V (k step n / 2, register 2 (n & 1) + hh), rounded to bf16 and summed as
// rounded; m and l are the rows' running maxima and sums; rescale(hh, alpha)
// scales row hh's output by what its new maximum makes of the old one.
template <int kKeys, typename Score, typename Rescale>
__device__ __forceinline__ void OnlineSoftmax(Score&& score, int key0, const int (&pos)[2], float sl2, int t4,
                                              uint32_t (&pf)[kKeys / 16][4], float (&m)[2], float (&l)[2],
                                              Rescale&& rescale) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& v = score(n, 2 * hh + e);
        if (key0 + 8 * n + 2 * t4 + e > pos[hh]) v = -INFINITY;
        mx = fmaxf(mx, v);
      }
    }
    mx = QuadMax(mx);
    const float m_new = fmaxf(m[hh], mx);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float neg = -m_use * sl2;
    const float alpha = exp2f(fmaf(m[hh], sl2, neg));
    m[hh] = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) {
      const uint32_t packed =
          PackBf16(exp2f(fmaf(score(n, 2 * hh), sl2, neg)), exp2f(fmaf(score(n, 2 * hh + 1), sl2, neg)));
      const float2 rounded = UnpackBf16(packed);
      sum += rounded.x + rounded.y;
      pf[n / 2][(n & 1) * 2 + hh] = packed;
    }
    l[hh] = l[hh] * alpha + sum;
    rescale(hh, alpha);
  }
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a shared array of
// rows of `kRowBytes`: chunks are XOR-swizzled within groups of 8 so that
// ldmatrix over 8 consecutive rows of one chunk column hits 8 distinct bank
// groups.
__device__ __forceinline__ int SwizzledRow(int row, int chunk) { return row * kRowBytes + ((chunk ^ (row & 7)) << 4); }

// The cache row of `key` of a sequence whose block table starts at `table`.
__device__ __forceinline__ const bf16* CacheRow(const MlaAbsorbedParams& p, int table, int key) {
  const int block = p.block_tables[table + key / p.block_size];
  return p.cache + ((static_cast<int64_t>(block) * p.layers + p.layer) * p.block_size + key % p.block_size) * kD;
}

// 16-byte chunk `chunk` of query row `row`: q_latent's chunks, then q_rope's.
__device__ __forceinline__ const bf16* QueryChunk(const MlaAbsorbedParams& p, int64_t row, int chunk) {
  return chunk < kRankChunks ? p.q_latent + row * kMlaRank + chunk * 8
                             : p.q_rope + row * kMlaRope + (chunk - kRankChunks) * 8;
}

__device__ __forceinline__ int SlabOffset(int row, int chunk) {
  return (chunk >> 3) * kSlabBytes + row * 128 + (((chunk & 7) ^ (row & 7)) << 4);
}

// The wgmma kernel's loads, in 64-column
// slabs with the 128-byte swizzle: a query tile of 64 rows (padding rows
// zero-filled), and the cache rows of 64 keys into one stage (keys past the
// split zero-filled: their probabilities are 0, and 0 * garbage could be NaN).
__device__ __forceinline__ void WgLoadQuery(uint8_t* s_q, const MlaWorkItem& it, const MlaAbsorbedParams& p,
                                            int tid) {
  for (int i = tid; i < 64 * kRowChunks; i += kThreads) {
    const int r = i / kRowChunks, c = i % kRowChunks;
    const bool valid = r < it.num_rows;
    const int64_t row = it.q_row + (valid ? r : 0);
    CpAsync16(SmemAddr(s_q + SlabOffset(r, c)), QueryChunk(p, row, c), valid);
  }
}

// The cache rows of the 64 keys of `tile` into shared memory at `dst`, gathered
// through the block table, their 16-byte chunks XOR-swizzled in groups of 8: group j
// of row r at dst + r * kRowStride + j * kGroupStride. Keys past the split are
// zero-filled (their probabilities are 0, and 0 * garbage could be NaN).
template <int kRowStride, int kGroupStride>
__device__ __forceinline__ void LoadCacheTile(uint32_t dst, const MlaWorkItem& it, int tile,
                                              const MlaAbsorbedParams& p, int tid) {
  const int key0 = it.key_begin + tile * kMlaTileKeys;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = (tid >> 3) + 32 * i;
    const int key = key0 + r;
    const bool valid = key < it.key_end;
    const bf16* src = valid ? CacheRow(p, it.table, key) : p.cache;
    const int c0 = tid & 7;
    const uint32_t dst_row = dst + r * kRowStride + ((c0 ^ (r & 7)) << 4);
#pragma unroll
    for (int j = 0; j < kRowChunks / 8; ++j) CpAsync16(dst_row + j * kGroupStride, src + (c0 + 8 * j) * 8, valid);
  }
}

// The FP8 cache row of `key` (MlaAbsorbedParams::fp8_cache).
__device__ __forceinline__ const uint8_t* Fp8CacheRow(const MlaAbsorbedParams& p, int table, int key) {
  const int block = p.block_tables[table + key / p.block_size];
  return p.fp8_cache +
         ((static_cast<int64_t>(block) * p.layers + p.layer) * p.block_size + key % p.block_size) * p.fp8_row_bytes;
}

// A 64-key tile of an FP8 cache at DeepSeek's dims, staged through registers:
// IssueFp8Tile starts loading each thread's share of the tile's c_kv bytes and
// scales into registers (and k_rope, already bf16, straight into place with
// cp.async); LandFp8Tile dequantizes the registers into the same bf16 layout
// LoadCacheTile writes. A kernel lands a tile after the math of the current
// one, so the loads overlap that math; with one tile in flight at a time this
// is 1.2-1.6x slower than a bf16 tile all the same (docs/perf.md, "FP8 latent
// cache"). Warp w takes rows w, w + 8, ..., its lanes the row's 32 chunks of 16
// values (512 contiguous bytes a load).
struct Fp8TileRegs {
  uint4 values[kFp8ChunksPerThread];
  float scales[kFp8ChunksPerThread];
};

template <int kRowStride, int kGroupStride>
__device__ __forceinline__ uint32_t TileChunkAddr(uint32_t dst, int row, int chunk) {
  return dst + row * kRowStride + (chunk >> 3) * kGroupStride + (((chunk & 7) ^ (row & 7)) << 4);
}

template <int kRowStride, int kGroupStride>
__device__ __forceinline__ void IssueFp8Tile(Fp8TileRegs& regs, uint32_t dst, const MlaWorkItem& it, int tile,
                                             const MlaAbsorbedParams& p, int tid) {
  const int key0 = it.key_begin + tile * kMlaTileKeys, lane = tid & 31, warp = tid >> 5;
#pragma unroll
  for (int i = 0; i < kFp8ChunksPerThread; ++i) {
    const int r = i * (kThreads / 32) + warp, key = key0 + r;
    if (key < it.key_end) {
      const uint8_t* row = Fp8CacheRow(p, it.table, key);
      regs.values[i] = __ldg(reinterpret_cast<const uint4*>(row) + lane);
      regs.scales[i] = __ldg(reinterpret_cast<const float*>(row + kMlaFp8ScalesAt) + lane / 8);
    } else {
      // Keys past the split: zero (their probabilities are 0, and 0 * garbage could be NaN).
      regs.values[i] = make_uint4(0, 0, 0, 0);
      regs.scales[i] = 0.0f;
    }
  }
#pragma unroll
  for (int i = 0; i < kFp8RopeChunksPerThread; ++i) {
    const int at = i * kThreads + tid, r = at >> 3, c = at & 7, key = key0 + r;
    const bool valid = key < it.key_end;
    const uint8_t* src = valid ? Fp8CacheRow(p, it.table, key) + kMlaFp8RopeAt + 16 * c : p.fp8_cache;
    CpAsync16(TileChunkAddr<kRowStride, kGroupStride>(dst, r, kRankChunks + c), src, valid);
  }
}

template <int kRowStride, int kGroupStride>
__device__ __forceinline__ void LandFp8Tile(const Fp8TileRegs& regs, uint32_t dst, int tid) {
  const int lane = tid & 31, warp = tid >> 5;
#pragma unroll
  for (int i = 0; i < kFp8ChunksPerThread; ++i) {
    const int r = i * (kThreads / 32) + warp;
    const uint4 v = regs.values[i];
    const float s = regs.scales[i];
    const uint4 lo = make_uint4(DequantFp8Pair(v.x, s), DequantFp8Pair(v.x >> 16, s), DequantFp8Pair(v.y, s),
                                DequantFp8Pair(v.y >> 16, s));
    const uint4 hi = make_uint4(DequantFp8Pair(v.z, s), DequantFp8Pair(v.z >> 16, s), DequantFp8Pair(v.w, s),
                                DequantFp8Pair(v.w >> 16, s));
    StShared16(TileChunkAddr<kRowStride, kGroupStride>(dst, r, 2 * lane), lo);
    StShared16(TileChunkAddr<kRowStride, kGroupStride>(dst, r, 2 * lane + 1), hi);
  }
}

// The wgmma layout: rows of 128 bytes within 64-column slabs.
__device__ __forceinline__ void WgLoadTile(uint8_t* s_stage, const MlaWorkItem& it, int tile,
                                           const MlaAbsorbedParams& p, int tid) {
  LoadCacheTile</*kRowStride=*/128, /*kGroupStride=*/kSlabBytes>(SmemAddr(s_stage), it, tile, p, tid);
}

// MN-major descriptor of 64-column slabs (ptx.h's SmemDesc): LBO = the slab stride.
__device__ __forceinline__ uint64_t MnMajorDesc(uint32_t addr) { return SmemDesc(addr, kSlabBytes, 1024); }

// D[64 x 32] += A * B, both from shared memory (descriptors), K-major.
__device__ __forceinline__ void WgmmaQk(float (&d)[16], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
      "}, %16, %17, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(a), "l"(b), "r"(1));
}

// D[64 x 256] += A * B, both from shared memory (descriptors), B MN-major.
__device__ __forceinline__ void WgmmaPv(float (&d)[128], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p, 1, 1, 0, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]),
        "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]),
        "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]),
        "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]),
        "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]),
        "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]),
        "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]),
        "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]),
        "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(a), "l"(b), "r"(1));
}

// D[64 x 64] = A * B (+ D when accumulate), both from shared memory (descriptors), K-major.
__device__ __forceinline__ void WgmmaQk64(float (&d)[32], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(accumulate));
}

// D[64 x 128] += A * B, A [64 x 16] from registers (the m16n8k16 A fragment of each
// warp's 16 rows), B from shared memory (descriptor), MN-major.
__device__ __forceinline__ void WgmmaPv128(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// Sum or maximum over a CTA of kGenericThreads.
__device__ __forceinline__ float BlockReduce(float v, float* red, bool is_max) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int off = 16; off > 0; off /= 2) {
    const float other = __shfl_xor_sync(0xffffffff, v, off);
    v = is_max ? fmaxf(v, other) : v + other;
  }
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < kGenericThreads / 32; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
  return r;
}

}  // namespace mlaserve::cuda::mla

#endif  // MLASERVE_KERNELS_CUDA_MLA_DEVICE_CUH_
