#include "kernels/cuda/mla_decode.h"

#include <atomic>
#include <cmath>
#include <cstdint>

namespace mlaserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kD = kMlaRank + kMlaRope;  // 576: c_kv ++ k_rope, one cache row
constexpr int kRowBytes = kD * 2;        // 1152
constexpr int kRankChunks = kMlaRank / 8;
constexpr int kRowChunks = kD / 8;  // 72 chunks of 16 bytes
constexpr int kThreads = 256;       // 8 warps per CTA on the tensor-core path
static_assert(kRowChunks % 8 == 0, "the XOR swizzle permutes chunks within groups of 8");
static_assert(kMlaTileKeys == 64, "the warp layouts below assume 64 keys per tile");

// ------------------------------------------------------------------ PTX wrappers

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; zero-filled when !valid (src is then not read).
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void CpAsyncWaitAll() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void LdMatrixX4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a * b: m16n8k16, bf16 inputs, float32 accumulators.
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ float2 UnpackBf16(uint32_t bits) {
  return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&bits));
}

__device__ __forceinline__ float QuadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffff, v, 2));
}
__device__ __forceinline__ float QuadSum(float v) {
  v += __shfl_xor_sync(0xffffffff, v, 1);
  return v + __shfl_xor_sync(0xffffffff, v, 2);
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a shared array of
// rows of `kRowBytes`: chunks are XOR-swizzled within groups of 8 so that
// ldmatrix over 8 consecutive rows of one chunk column hits 8 distinct bank
// groups.
__device__ __forceinline__ int SwizzledRow(int row, int chunk) {
  return row * kRowBytes + ((chunk ^ (row & 7)) << 4);
}

// ------------------------------------------------------------------ absorbed, tensor cores
//
// A CTA of 8 warps holds kRows = 16 * kMT * kWM query rows. Warps form a kWM x kWN grid
// (kWN = 8 / kWM): warp (wm, wn) owns rows [wm * 16 * kMT, +16 * kMT). For each tile of
// 64 keys it computes the scores of its rows against keys slice wn (64 / kWN keys), the
// warps of a row group exchange their row maxima and probabilities through shared
// memory, and it accumulates output columns slice wn (512 / kWN columns) over all 64
// keys. 16 rows: 1 x 8 warps (8 keys, 64 columns each); 64 rows: 2 x 4 warps (32 rows,
// 16 keys, 128 columns each: 128 float accumulators per thread).
template <int kMT, int kWM>
struct TileShape {
  static constexpr int kWN = 8 / kWM;
  static constexpr int kRows = 16 * kMT * kWM;
  static constexpr int kKeysPerWarp = kMlaTileKeys / kWN;
  static constexpr int kQkTiles = kKeysPerWarp / 8;  // n8 tiles of Q K^T per warp
  static constexpr int kColsPerWarp = kMlaRank / kWN;
  static constexpr int kPvTiles = kColsPerWarp / 8;  // n8 tiles of P V per warp
  static constexpr int kQBytes = kRows * kRowBytes;
  static constexpr int kKBytes = kMlaTileKeys * kRowBytes;
  static constexpr int kPBytes = kRows * kMlaTileKeys * 2;  // rows of 64 bf16 = 8 chunks
  static constexpr int kRedBytes = kWN * kRows * 4;
  static constexpr int kSmemBytes = kQBytes + 2 * kKBytes + kPBytes + 2 * kRedBytes;
  static_assert(kQkTiles == 1 || kQkTiles == 2, "");
  static_assert(kPvTiles % 2 == 0, "");
};

template <int kMT, int kWM>
__global__ void __launch_bounds__(kThreads, 1)
    MlaAbsorbedTcKernel(const MlaWorkItem* __restrict__ items, const MlaAbsorbedParams p) {
  using S = TileShape<kMT, kWM>;
  constexpr int kWN = S::kWN, kRows = S::kRows;
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* const s_q = smem;
  uint8_t* const s_k = smem + S::kQBytes;  // two stages
  uint8_t* const s_p = s_k + 2 * S::kKBytes;
  float* const s_max = reinterpret_cast<float*>(s_p + S::kPBytes);
  float* const s_sum = s_max + kWN * kRows;

  const MlaWorkItem item = items[blockIdx.x];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / kWN, wn = warp % kWN;
  const int g = lane >> 2, t4 = lane & 3;
  const float sl2 = p.softmax_scale * kLog2e;

  // Query tile: rows of q_latent ++ q_rope (padding rows zero-filled).
  for (int i = tid; i < kRows * kRowChunks; i += kThreads) {
    const int r = i / kRowChunks, c = i % kRowChunks;
    const bool valid = r < item.num_rows;
    const int64_t row = item.q_row + (valid ? r : 0);
    const bf16* src = c < kRankChunks ? p.q_latent + row * kMlaRank + c * 8
                                      : p.q_rope + row * kMlaRope + (c - kRankChunks) * 8;
    CpAsync16(SmemAddr(s_q + SwizzledRow(r, c)), src, valid);
  }

  // Cache rows of keys [key0, key0 + 64) through the block table; keys past the
  // split are zero-filled (their probabilities are 0, and 0 * garbage could be NaN).
  const int num_tiles = (item.key_end - item.key_begin + kMlaTileKeys - 1) / kMlaTileKeys;
  auto load_tile = [&](int tile) {
    const int key0 = item.key_begin + tile * kMlaTileKeys;
    const uint32_t dst = SmemAddr(s_k + (tile & 1) * S::kKBytes);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = (tid >> 3) + 32 * i;
      const int key = key0 + r;
      const bool valid = key < item.key_end;
      const bf16* src = p.cache;
      if (valid) {
        const int block = p.block_tables[item.table + key / p.block_size];
        src = p.cache + ((static_cast<int64_t>(block) * p.layers + p.layer) * p.block_size + key % p.block_size) * kD;
      }
      const int c0 = tid & 7;
      const uint32_t dst_row = dst + r * kRowBytes + (((c0 ^ (r & 7))) << 4);
#pragma unroll
      for (int j = 0; j < kRowChunks / 8; ++j) CpAsync16(dst_row + (j << 7), src + (c0 + 8 * j) * 8, valid);
    }
    CpAsyncCommit();
  };
  load_tile(0);  // (the same group as the query tile)

  // Each thread's rows: (mt, h) -> row wm * 16 * kMT + mt * 16 + g + 8 * h, and the
  // keys each of them may see in this split (causal).
  int limit[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = wm * 16 * kMT + mt * 16 + g + 8 * h;
      limit[mt][h] = min(item.prefix + (item.seq_row + r) / p.heads + 1, item.key_end);
    }
  }

  float o[kMT][S::kPvTiles][4];
  float m[kMT][2], l[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < S::kPvTiles; ++nt) o[mt][nt][0] = o[mt][nt][1] = o[mt][nt][2] = o[mt][nt][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }

  // Per-lane ldmatrix offsets. A operands (rows r of Q or P, 16-row tile): lane supplies
  // row (lane & 7) + 8 * ((lane >> 3) & 1) and chunk 2k + (lane >> 4).
  const int a_row = wm * 16 * kMT + (lane & 7) + 8 * ((lane >> 3) & 1);
  const int lo = lane & 7;
  int a_chunk[4];  // swizzled (2j + (lane >> 4)) within a group of 8 chunks
#pragma unroll
  for (int j = 0; j < 4; ++j) a_chunk[j] = (2 * j + (lane >> 4)) ^ lo;
  const uint32_t q_base = SmemAddr(s_q) + a_row * kRowBytes;
  const uint32_t p_base = SmemAddr(s_p) + a_row * 128;

  for (int tile = 0; tile < num_tiles; ++tile) {
    CpAsyncWaitAll();
    __syncthreads();  // tile visible; every warp is done with the previous tile and with s_p
    if (tile + 1 < num_tiles) load_tile(tile + 1);
    const uint32_t k_base = SmemAddr(s_k + (tile & 1) * S::kKBytes);

    // ---- scores: S = Q K^T over 576 dims, rows x this warp's keys
    float s[kMT][S::kQkTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < S::kQkTiles; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
    }
    if constexpr (S::kQkTiles == 2) {
      // B: keys wn * 16 + (lane & 7) + 8 * (lane >> 4), chunk 2k + ((lane >> 3) & 1).
      const uint32_t b_base = k_base + (wn * 16 + lo + 8 * (lane >> 4)) * kRowBytes;
      int b_chunk[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) b_chunk[j] = (2 * j + ((lane >> 3) & 1)) ^ lo;
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        const int group = (ks >> 2) << 7;
        uint32_t b[4];
        LdMatrixX4(b_base + group + (b_chunk[ks & 3] << 4), b);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          uint32_t a[4];
          LdMatrixX4(q_base + mt * 16 * kRowBytes + group + (a_chunk[ks & 3] << 4), a);
          Mma(s[mt][0], a, b[0], b[1]);
          Mma(s[mt][1], a, b[2], b[3]);
        }
      }
    } else {
      // One n8 tile; B covers two k steps: keys wn * 8 + (lane & 7), chunk 2k + (lane >> 3).
      const uint32_t b_base = k_base + (wn * 8 + lo) * kRowBytes;
      int b_chunk[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) b_chunk[j] = (4 * j + (lane >> 3)) ^ lo;
#pragma unroll
      for (int ks = 0; ks < kD / 16; ks += 2) {
        const int group = (ks >> 2) << 7;
        uint32_t b[4];
        LdMatrixX4(b_base + group + (b_chunk[(ks >> 1) & 1] << 4), b);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          uint32_t a0[4], a1[4];
          LdMatrixX4(q_base + mt * 16 * kRowBytes + group + (a_chunk[ks & 3] << 4), a0);
          LdMatrixX4(q_base + mt * 16 * kRowBytes + group + (a_chunk[(ks + 1) & 3] << 4), a1);
          Mma(s[mt][0], a0, b[0], b[1]);
          Mma(s[mt][0], a1, b[2], b[3]);
        }
      }
    }

    // ---- causal / split mask, and this warp's row maxima
    const int key_base = item.key_begin + tile * kMlaTileKeys + wn * S::kKeysPerWarp + 2 * t4;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < S::kQkTiles; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int key = key_base + nt * 8 + e;
            float& v = s[mt][nt][2 * h + e];
            if (key >= limit[mt][h]) v = -INFINITY;
            mx = fmaxf(mx, v);
          }
        }
        mx = QuadMax(mx);
        if (t4 == 0) s_max[wn * kRows + wm * 16 * kMT + mt * 16 + g + 8 * h] = mx;
      }
    }
    __syncthreads();

    // ---- online softmax: new maxima (identical in every warp of the row group),
    // probabilities of this warp's keys into s_p, accumulators rescaled.
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm * 16 * kMT + mt * 16 + g + 8 * h;
        float m_new = m[mt][h];
#pragma unroll
        for (int w = 0; w < kWN; ++w) m_new = fmaxf(m_new, s_max[w * kRows + r]);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        const float neg = -m_use * sl2;
        const float alpha = exp2f(fmaf(m[mt][h], sl2, neg));
        m[mt][h] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < S::kQkTiles; ++nt) {
          const uint32_t packed =
              PackBf16(exp2f(fmaf(s[mt][nt][2 * h], sl2, neg)), exp2f(fmaf(s[mt][nt][2 * h + 1], sl2, neg)));
          const float2 rounded = UnpackBf16(packed);
          sum += rounded.x + rounded.y;
          const int chunk = wn * (S::kKeysPerWarp / 8) + nt;
          *reinterpret_cast<uint32_t*>(s_p + r * 128 + ((chunk ^ g) << 4) + 4 * t4) = packed;
        }
        l[mt][h] = l[mt][h] * alpha + sum;
#pragma unroll
        for (int nt = 0; nt < S::kPvTiles; ++nt) {
          o[mt][nt][2 * h] *= alpha;
          o[mt][nt][2 * h + 1] *= alpha;
        }
      }
    }
    __syncthreads();

    // ---- O += P V over the tile's 64 keys, this warp's columns
#pragma unroll
    for (int kk = 0; kk < kMlaTileKeys / 16; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) LdMatrixX4(p_base + mt * 16 * 128 + (a_chunk[kk] << 4), a[mt]);
      // V = the first 512 dims of the key rows: keys kk * 16 + (lane & 7) + 8 * ((lane >> 3) & 1),
      // chunk wn * kColsPerWarp / 8 + 2 np + (lane >> 4), transposed.
      const uint32_t v_base = k_base + (kk * 16 + lo + 8 * ((lane >> 3) & 1)) * kRowBytes;
#pragma unroll
      for (int np = 0; np < S::kPvTiles / 2; ++np) {
        const int chunk = wn * (S::kColsPerWarp / 8) + 2 * np + (lane >> 4);
        uint32_t b[4];
        LdMatrixX4Trans(v_base + ((chunk ^ lo) << 4), b);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          Mma(o[mt][2 * np], a[mt], b[0], b[1]);
          Mma(o[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }

  // ---- epilogue: row sums across the quad and the warps of the row group
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float sum = QuadSum(l[mt][h]);
      if (t4 == 0) s_sum[wn * kRows + wm * 16 * kMT + mt * 16 + g + 8 * h] = sum;
    }
  }
  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = wm * 16 * kMT + mt * 16 + g + 8 * h;
      if (r >= item.num_rows) continue;
      float total = 0.0f;
#pragma unroll
      for (int w = 0; w < kWN; ++w) total += s_sum[w * kRows + r];
      const float inv = total > 0.0f ? 1.0f / total : 0.0f;
      const int col0 = wn * S::kColsPerWarp + 2 * t4;
      if (item.partial < 0) {
        bf16* dst = p.out + static_cast<int64_t>(item.q_row + r) * kMlaRank + col0;
#pragma unroll
        for (int nt = 0; nt < S::kPvTiles; ++nt) {
          *reinterpret_cast<uint32_t*>(dst + nt * 8) = PackBf16(o[mt][nt][2 * h] * inv, o[mt][nt][2 * h + 1] * inv);
        }
      } else {
        const int64_t prow = static_cast<int64_t>(item.partial) + r;
        float* dst = p.partial_out + prow * kMlaRank + col0;
#pragma unroll
        for (int nt = 0; nt < S::kPvTiles; ++nt) {
          *reinterpret_cast<float2*>(dst + nt * 8) = make_float2(o[mt][nt][2 * h] * inv, o[mt][nt][2 * h + 1] * inv);
        }
        if (wn == 0 && t4 == 0) p.partial_lse[prow] = total > 0.0f ? m[mt][h] * sl2 + log2f(total) : -INFINITY;
      }
    }
  }
}

// ------------------------------------------------------------------ absorbed, generic
//
// Any rank and rope: one CTA per (row, split) on CUDA cores; a warp per key for the
// scores, a thread per output column for the weighted sum. For small test models.
constexpr int kGenericThreads = 128;

__device__ float BlockReduce(float v, float* red, bool is_max) {
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

__global__ void __launch_bounds__(kGenericThreads)
    MlaAbsorbedGenericKernel(const MlaWorkItem* __restrict__ items, const MlaAbsorbedParams p) {
  extern __shared__ __align__(128) uint8_t smem[];
  const int dims = p.rank + p.rope;
  int64_t* const s_row = reinterpret_cast<int64_t*>(smem);                    // [kMlaGenericMaxKeys]
  float* const s_score = reinterpret_cast<float*>(s_row + kMlaGenericMaxKeys);  // [kMlaGenericMaxKeys]
  float* const s_red = s_score + kMlaGenericMaxKeys;                           // [32]
  float* const s_q = s_red + 32;                                               // [dims]

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
    const int64_t offset = ((static_cast<int64_t>(block) * p.layers + p.layer) * p.block_size + key % p.block_size) * dims;
    const bf16* kv = p.cache + offset;
    float dot = 0.0f;
    for (int d = lane; d < dims; d += 32) dot += s_q[d] * __bfloat162float(kv[d]);
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
    for (int j = 0; j < n; ++j) acc += s_score[j] * __bfloat162float(p.cache[s_row[j] + d]);
    if (item.partial < 0) {
      p.out[row * p.rank + d] = __float2bfloat16(acc * inv);
    } else {
      p.partial_out[static_cast<int64_t>(item.partial) * p.rank + d] = acc * inv;
    }
  }
  if (item.partial >= 0 && tid == 0) p.partial_lse[item.partial] = sum > 0.0f ? mx + log2f(sum) : -INFINITY;
}

// ------------------------------------------------------------------ combine
//
// One CTA per tile, a warp per row: weights exp2(lse_s - max lse), summed in split
// order (deterministic), then the weighted mean of the normalized partial rows.
constexpr int kCombineThreads = 256;

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

// ------------------------------------------------------------------ expanded, tensor cores
//
// FlashAttention-2 style for one sequence: a CTA of 4 warps takes 64 queries of one
// head, each warp 16 of them; keys in tiles of 64 (K = k_nope ++ k_rope, V) through a
// two-stage cp.async pipeline; the probabilities stay in registers (the accumulator
// layout of S is the A-operand layout of P V). Rows padded by 16 bytes in shared memory.
constexpr int kExpThreads = 128;
constexpr int kExpRows = 64;
constexpr int kExpKeys = 64;

template <int kDqk, int kDv>
struct ExpShape {
  static constexpr int kQStride = kDqk * 2 + 16;
  static constexpr int kVStride = kDv * 2 + 16;
  static constexpr int kQBytes = kExpRows * kQStride;
  static constexpr int kKBytes = kExpKeys * kQStride;
  static constexpr int kVBytes = kExpKeys * kVStride;
  static constexpr int kSmemBytes = kQBytes + 2 * (kKBytes + kVBytes);
  static_assert(kDqk % 16 == 0 && kDv % 16 == 0, "");
};

template <int kDqk, int kDv>
__global__ void __launch_bounds__(kExpThreads) MlaExpandedTcKernel(const MlaExpandedParams p) {
  using S = ExpShape<kDqk, kDv>;
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* const s_q = smem;
  uint8_t* const s_k = smem + S::kQBytes;           // two stages
  uint8_t* const s_v = s_k + 2 * S::kKBytes;        // two stages
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3, lo = lane & 7;
  const int q0 = blockIdx.x * kExpRows, h = blockIdx.y;
  const int T = p.num_queries, num_keys = p.num_keys, H = p.heads;
  const int nope_chunks = p.nope / 8;
  constexpr int kQkChunks = kDqk / 8, kVChunks = kDv / 8;
  const float sl2 = p.softmax_scale * kLog2e;

  for (int i = tid; i < kExpRows * kQkChunks; i += kExpThreads) {
    const int r = i / kQkChunks, c = i % kQkChunks;
    const bool valid = q0 + r < T;
    const int64_t row = static_cast<int64_t>(valid ? q0 + r : q0) * H + h;
    const bf16* src = c < nope_chunks ? p.q_nope + row * p.nope + c * 8 : p.q_rope + row * p.rope + (c - nope_chunks) * 8;
    CpAsync16(SmemAddr(s_q + r * S::kQStride + c * 16), src, valid);
  }
  const int last_pos = num_keys - T + min(q0 + kExpRows - 1, T - 1);
  const int num_tiles = last_pos / kExpKeys + 1;
  auto load_tile = [&](int tile) {
    const int stage = tile & 1;
    const uint32_t k_dst = SmemAddr(s_k + stage * S::kKBytes), v_dst = SmemAddr(s_v + stage * S::kVBytes);
    for (int i = tid; i < kExpKeys * (kQkChunks + kVChunks); i += kExpThreads) {
      const int r = i / (kQkChunks + kVChunks), c = i % (kQkChunks + kVChunks);
      const int key = tile * kExpKeys + r;
      const bool valid = key < num_keys;
      const int64_t krow = valid ? key : 0;
      if (c < kQkChunks) {
        const bf16* src = c < nope_chunks ? p.k_nope + (krow * H + h) * p.nope + c * 8
                                          : p.k_rope + krow * p.rope + (c - nope_chunks) * 8;
        CpAsync16(k_dst + r * S::kQStride + c * 16, src, valid);
      } else {
        const int cv = c - kQkChunks;
        CpAsync16(v_dst + r * S::kVStride + cv * 16, p.v + (krow * H + h) * p.dv + cv * 8, valid);
      }
    }
    CpAsyncCommit();
  };
  load_tile(0);

  float o[kDv / 8][4];
#pragma unroll
  for (int nt = 0; nt < kDv / 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  int pos[2];
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) pos[hh] = min(num_keys - T + q0 + warp * 16 + g + 8 * hh, num_keys - 1);
  uint32_t qf[kDqk / 16][4];

  for (int tile = 0; tile < num_tiles; ++tile) {
    CpAsyncWaitAll();
    __syncthreads();
    if (tile + 1 < num_tiles) load_tile(tile + 1);
    if (tile == 0) {
      const uint32_t a_base = SmemAddr(s_q) + (warp * 16 + lo + 8 * ((lane >> 3) & 1)) * S::kQStride + (lane >> 4) * 16;
#pragma unroll
      for (int ks = 0; ks < kDqk / 16; ++ks) LdMatrixX4(a_base + ks * 32, qf[ks]);
    }
    const uint32_t k_base = SmemAddr(s_k + (tile & 1) * S::kKBytes);
    const uint32_t v_base = SmemAddr(s_v + (tile & 1) * S::kVBytes);

    float s[kExpKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kExpKeys / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int np = 0; np < kExpKeys / 16; ++np) {
      const uint32_t b_base = k_base + (np * 16 + lo + 8 * (lane >> 4)) * S::kQStride + ((lane >> 3) & 1) * 16;
#pragma unroll
      for (int ks = 0; ks < kDqk / 16; ++ks) {
        uint32_t b[4];
        LdMatrixX4(b_base + ks * 32, b);
        Mma(s[2 * np], qf[ks], b[0], b[1]);
        Mma(s[2 * np + 1], qf[ks], b[2], b[3]);
      }
    }
    uint32_t pf[kExpKeys / 16][4];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kExpKeys / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = tile * kExpKeys + nt * 8 + 2 * t4 + e;
          float& v = s[nt][2 * hh + e];
          if (key > pos[hh]) v = -INFINITY;
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
      for (int nt = 0; nt < kExpKeys / 8; ++nt) {
        const uint32_t packed = PackBf16(exp2f(fmaf(s[nt][2 * hh], sl2, neg)), exp2f(fmaf(s[nt][2 * hh + 1], sl2, neg)));
        const float2 rounded = UnpackBf16(packed);
        sum += rounded.x + rounded.y;
        // accumulator (row g + 8 hh, keys nt * 8 + 2 t4) -> A fragment of k step nt / 2
        pf[nt / 2][(nt & 1) * 2 + hh] = packed;
      }
      l[hh] = l[hh] * alpha + sum;
#pragma unroll
      for (int nt = 0; nt < kDv / 8; ++nt) {
        o[nt][2 * hh] *= alpha;
        o[nt][2 * hh + 1] *= alpha;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kExpKeys / 16; ++kk) {
      const uint32_t vb = v_base + (kk * 16 + lo + 8 * ((lane >> 3) & 1)) * S::kVStride + (lane >> 4) * 16;
#pragma unroll
      for (int np = 0; np < kDv / 16; ++np) {
        uint32_t b[4];
        LdMatrixX4Trans(vb + np * 32, b);
        Mma(o[2 * np], pf[kk], b[0], b[1]);
        Mma(o[2 * np + 1], pf[kk], b[2], b[3]);
      }
    }
  }

#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int q = q0 + warp * 16 + g + 8 * hh;
    const float total = QuadSum(l[hh]);
    if (q >= T) continue;
    const float inv = 1.0f / total;
    bf16* dst = p.out + (static_cast<int64_t>(q) * H + h) * p.dv + 2 * t4;
#pragma unroll
    for (int nt = 0; nt < kDv / 8; ++nt) {
      *reinterpret_cast<uint32_t*>(dst + nt * 8) = PackBf16(o[nt][2 * hh] * inv, o[nt][2 * hh + 1] * inv);
    }
  }
}

// ------------------------------------------------------------------ expanded, generic
//
// Any dims (dv up to 4 * 128): one CTA per (query, head), keys in chunks of 128 with an
// online softmax; CUDA cores.
constexpr int kExpGenericChunk = 128;
constexpr int kExpGenericMaxDvPerThread = 4;

__global__ void __launch_bounds__(kGenericThreads) MlaExpandedGenericKernel(const MlaExpandedParams p) {
  extern __shared__ __align__(128) uint8_t smem[];
  float* const s_score = reinterpret_cast<float*>(smem);  // [kExpGenericChunk]
  float* const s_red = s_score + kExpGenericChunk;        // [32]
  float* const s_q = s_red + 32;                          // [nope + rope]
  const int t = blockIdx.x, h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int H = p.heads, dqk = p.nope + p.rope;
  const int64_t qrow = static_cast<int64_t>(t) * H + h;
  for (int d = tid; d < dqk; d += kGenericThreads) {
    s_q[d] = __bfloat162float(d < p.nope ? p.q_nope[qrow * p.nope + d] : p.q_rope[qrow * p.rope + d - p.nope]);
  }
  const int n = p.num_keys - p.num_queries + t + 1;
  const float sl2 = p.softmax_scale * kLog2e;
  float o[kExpGenericMaxDvPerThread] = {};
  float m = -INFINITY, l = 0.0f;
  __syncthreads();
  for (int j0 = 0; j0 < n; j0 += kExpGenericChunk) {
    const int jn = min(kExpGenericChunk, n - j0);
    for (int j = warp; j < jn; j += kGenericThreads / 32) {
      const int64_t key = j0 + j;
      const bf16* kn = p.k_nope + (key * H + h) * p.nope;
      const bf16* kr = p.k_rope + key * p.rope;
      float dot = 0.0f;
      for (int d = lane; d < dqk; d += 32) {
        dot += s_q[d] * __bfloat162float(d < p.nope ? kn[d] : kr[d - p.nope]);
      }
      for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffff, dot, off);
      if (lane == 0) s_score[j] = dot * sl2;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int j = tid; j < jn; j += kGenericThreads) mx = fmaxf(mx, s_score[j]);
    mx = BlockReduce(mx, s_red, true);
    const float m_new = fmaxf(m, mx);
    const float alpha = exp2f(m - m_new);
    m = m_new;
    __syncthreads();
    for (int j = tid; j < jn; j += kGenericThreads) s_score[j] = exp2f(s_score[j] - m_new);
    __syncthreads();
    float sum = 0.0f;
    for (int j = 0; j < jn; ++j) sum += s_score[j];
    l = l * alpha + sum;
#pragma unroll
    for (int i = 0; i < kExpGenericMaxDvPerThread; ++i) {
      const int d = tid + i * kGenericThreads;
      if (d >= p.dv) break;
      float acc = o[i] * alpha;
      for (int j = 0; j < jn; ++j) acc += s_score[j] * __bfloat162float(p.v[((j0 + j) * static_cast<int64_t>(H) + h) * p.dv + d]);
      o[i] = acc;
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kExpGenericMaxDvPerThread; ++i) {
    const int d = tid + i * kGenericThreads;
    if (d < p.dv) p.out[qrow * p.dv + d] = __float2bfloat16(o[i] / l);
  }
}

// Raises a kernel's dynamic shared-memory limit once per device.
cudaError_t AllowSmem(const void* kernel, int bytes, std::atomic<uint64_t>& done) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = uint64_t{1} << (device & 63);
  if (done.load(std::memory_order_acquire) & bit) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) done.fetch_or(bit, std::memory_order_acq_rel);
  return err;
}

template <int kMT, int kWM>
cudaError_t LaunchTc(const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params, cudaStream_t stream) {
  static std::atomic<uint64_t> done{0};
  constexpr int smem = TileShape<kMT, kWM>::kSmemBytes;
  cudaError_t err = AllowSmem(reinterpret_cast<const void*>(&MlaAbsorbedTcKernel<kMT, kWM>), smem, done);
  if (err != cudaSuccess) return err;
  MlaAbsorbedTcKernel<kMT, kWM><<<num_items, kThreads, smem, stream>>>(items, params);
  return cudaGetLastError();
}

template <int kDqk, int kDv>
cudaError_t LaunchExpandedTc(const MlaExpandedParams& params, cudaStream_t stream) {
  static std::atomic<uint64_t> done{0};
  constexpr int smem = ExpShape<kDqk, kDv>::kSmemBytes;
  cudaError_t err = AllowSmem(reinterpret_cast<const void*>(&MlaExpandedTcKernel<kDqk, kDv>), smem, done);
  if (err != cudaSuccess) return err;
  const dim3 grid((params.num_queries + kExpRows - 1) / kExpRows, params.heads);
  MlaExpandedTcKernel<kDqk, kDv><<<grid, kExpThreads, smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace

cudaError_t MlaAbsorbed(MlaTileKind kind, const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params,
                        cudaStream_t stream) {
  if (num_items == 0) return cudaSuccess;
  switch (kind) {
    case MlaTileKind::kRows16:
      if (params.rank != kMlaRank || params.rope != kMlaRope) return cudaErrorInvalidValue;
      return LaunchTc<1, 1>(items, num_items, params, stream);
    case MlaTileKind::kRows64:
      if (params.rank != kMlaRank || params.rope != kMlaRope) return cudaErrorInvalidValue;
      return LaunchTc<2, 2>(items, num_items, params, stream);
    case MlaTileKind::kGeneric: {
      if (params.rank + params.rope > kMlaGenericMaxDims) return cudaErrorInvalidValue;
      static std::atomic<uint64_t> done{0};
      constexpr int kMaxSmem = kMlaGenericMaxKeys * (8 + 4) + 32 * 4 + kMlaGenericMaxDims * 4;
      const int smem = kMlaGenericMaxKeys * (8 + 4) + 32 * 4 + (params.rank + params.rope) * 4;
      cudaError_t err = AllowSmem(reinterpret_cast<const void*>(&MlaAbsorbedGenericKernel), kMaxSmem, done);
      if (err != cudaSuccess) return err;
      MlaAbsorbedGenericKernel<<<num_items, kGenericThreads, smem, stream>>>(items, params);
      return cudaGetLastError();
    }
  }
  return cudaErrorInvalidValue;
}

cudaError_t MlaCombine(const MlaCombineItem* items, int num_items, const float* partial_out, const float* partial_lse,
                       int rank, __nv_bfloat16* out, cudaStream_t stream) {
  if (num_items == 0) return cudaSuccess;
  MlaCombineKernel<<<num_items, kCombineThreads, 0, stream>>>(items, partial_out, partial_lse, rank, out);
  return cudaGetLastError();
}

cudaError_t MlaExpanded(const MlaExpandedParams& params, cudaStream_t stream) {
  if (params.num_queries == 0 || params.heads == 0) return cudaSuccess;
  if (params.num_queries > params.num_keys) return cudaErrorInvalidValue;
  const int dqk = params.nope + params.rope;
  auto aligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; };
  if (params.nope % 8 == 0 && params.rope % 8 == 0 && aligned(params.q_nope) && aligned(params.q_rope) &&
      aligned(params.k_nope) && aligned(params.k_rope) && aligned(params.v) && aligned(params.out)) {
    if (dqk == 192 && params.dv == 128) return LaunchExpandedTc<192, 128>(params, stream);
    if (dqk == 48 && params.dv == 32) return LaunchExpandedTc<48, 32>(params, stream);
  }
  if (params.dv > kMlaExpandedMaxDv || dqk > kMlaGenericMaxDims) return cudaErrorInvalidValue;
  static_assert(kMlaExpandedMaxDv <= kGenericThreads * kExpGenericMaxDvPerThread);
  static std::atomic<uint64_t> done{0};
  constexpr int kMaxSmem = (kExpGenericChunk + 32 + kMlaGenericMaxDims) * 4;
  const int smem = (kExpGenericChunk + 32 + dqk) * 4;
  cudaError_t err = AllowSmem(reinterpret_cast<const void*>(&MlaExpandedGenericKernel), kMaxSmem, done);
  if (err != cudaSuccess) return err;
  MlaExpandedGenericKernel<<<dim3(params.num_queries, params.heads), kGenericThreads, smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace mlaserve::cuda
