#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/mla_decode.h"
#include "kernels/cuda/ptx.h"

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

// The per-row state and the work item a CTA is on. Persistent CTAs (grid smaller than
// the item count) take items blockIdx.x, blockIdx.x + gridDim.x, ...; while the last
// tile of an item is computed, the first cache tile of the next item is already loading
// into the free stage, and its query tile is loaded as soon as the last Q K^T is done.
template <int kMT, int kWM>
__global__ void __launch_bounds__(kThreads, 1)
    MlaAbsorbedTcKernel(const MlaWorkItem* __restrict__ items, int num_items, const MlaAbsorbedParams p, int flags) {
  using S = TileShape<kMT, kWM>;
  constexpr int kWN = S::kWN, kRows = S::kRows;
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* const s_q = smem;
  uint8_t* const s_k = smem + S::kQBytes;  // two stages
  uint8_t* const s_p = s_k + 2 * S::kKBytes;
  float* const s_max = reinterpret_cast<float*>(s_p + S::kPBytes);
  float* const s_sum = s_max + kWN * kRows;

  int idx = blockIdx.x;
  if (idx >= num_items) return;
  MlaWorkItem item = items[idx];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / kWN, wn = warp % kWN;
  const int g = lane >> 2, t4 = lane & 3;
  const float sl2 = p.softmax_scale * kLog2e;

  // Query tile: rows of q_latent ++ q_rope (padding rows zero-filled).
  auto load_q = [&](const MlaWorkItem& it) {
    for (int i = tid; i < kRows * kRowChunks; i += kThreads) {
      const int r = i / kRowChunks, c = i % kRowChunks;
      const bool valid = r < it.num_rows;
      const int64_t row = it.q_row + (valid ? r : 0);
      const bf16* src = QueryChunk(p, row, c);
      CpAsync16(SmemAddr(s_q + SwizzledRow(r, c)), src, valid);
    }
  };
  // Cache rows of keys [key0, key0 + 64) through the block table; keys past the
  // split are zero-filled (their probabilities are 0, and 0 * garbage could be NaN).
  auto load_tile = [&](const MlaWorkItem& it, int tile, int stage) {
    const int key0 = it.key_begin + tile * kMlaTileKeys;
    const uint32_t dst = SmemAddr(s_k + stage * S::kKBytes);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = (tid >> 3) + 32 * i;
      const int key = key0 + r;
      const bool valid = key < it.key_end;
      const bf16* src = valid ? CacheRow(p, it.table, key) : p.cache;
      const int c0 = tid & 7;
      const uint32_t dst_row = dst + r * kRowBytes + (((c0 ^ (r & 7))) << 4);
#pragma unroll
      for (int j = 0; j < kRowChunks / 8; ++j) CpAsync16(dst_row + (j << 7), src + (c0 + 8 * j) * 8, valid);
    }
  };
  // L2 prefetch of the cache rows of the step after the next one (one bulk prefetch
  // per row): the cp.async of the next step then mostly hits L2.
  auto prefetch_tile = [&](const MlaWorkItem& it, int tile) {
    const int key = it.key_begin + tile * kMlaTileKeys + tid;
    if (key < it.key_end) {
      PrefetchL2(CacheRow(p, it.table, key), kRowBytes);
    }
  };
  auto prefetch_ahead = [&](const MlaWorkItem& it, int tile, int num_tiles, int next_idx) {
    if (tid >= kMlaTileKeys) return;
    if (tile + 2 < num_tiles) {
      prefetch_tile(it, tile + 2);
    } else if (next_idx < num_items) {
      const MlaWorkItem next = items[next_idx];
      const int k = tile + 2 - num_tiles;
      if (next.key_begin + k * kMlaTileKeys < next.key_end) prefetch_tile(next, k);
    }
  };
  load_q(item);
  load_tile(item, 0, 0);
  CpAsyncCommit();

  // Each thread's rows: (mt, h) -> row wm * 16 * kMT + mt * 16 + g + 8 * h, and the
  // keys each of them may see in this split (causal).
  int limit[kMT][2];
  auto set_limits = [&](const MlaWorkItem& it) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm * 16 * kMT + mt * 16 + g + 8 * h;
        limit[mt][h] = min(it.prefix + (it.seq_row + r) / p.heads + 1, it.key_end);
      }
    }
  };
  set_limits(item);
  int num_tiles = (item.key_end - item.key_begin + kMlaTileKeys - 1) / kMlaTileKeys;

  float o[kMT][S::kPvTiles][4];
  float m[kMT][2], l[kMT][2];
  auto reset = [&]() {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < S::kPvTiles; ++nt) o[mt][nt][0] = o[mt][nt][1] = o[mt][nt][2] = o[mt][nt][3] = 0.0f;
      m[mt][0] = m[mt][1] = -INFINITY;
      l[mt][0] = l[mt][1] = 0.0f;
    }
  };
  reset();

  // Per-lane ldmatrix offsets. A operands (rows r of Q or P, 16-row tile): lane supplies
  // row (lane & 7) + 8 * ((lane >> 3) & 1) and chunk 2k + (lane >> 4).
  const int a_row = wm * 16 * kMT + (lane & 7) + 8 * ((lane >> 3) & 1);
  const int lo = lane & 7;
  int a_chunk[4];  // swizzled (2j + (lane >> 4)) within a group of 8 chunks
#pragma unroll
  for (int j = 0; j < 4; ++j) a_chunk[j] = (2 * j + (lane >> 4)) ^ lo;
  const uint32_t q_base = SmemAddr(s_q) + a_row * kRowBytes;
  const uint32_t p_base = SmemAddr(s_p) + a_row * 128;

  int tile = 0, stage = 0;
  while (true) {
    CpAsyncWaitAll();
    __syncthreads();  // tile visible; every warp is done with the previous tile and with s_p
    const int next_idx = idx + gridDim.x;
    const bool last = tile + 1 == num_tiles;
    const bool has_next = last && next_idx < num_items;
    MlaWorkItem next_item = item;
    if (!last) {
      load_tile(item, tile + 1, stage ^ 1);
    } else if (has_next) {
      next_item = items[next_idx];
      load_tile(next_item, 0, stage ^ 1);
    }
    CpAsyncCommit();
    if (flags & kMlaPrefetch) prefetch_ahead(item, tile, num_tiles, next_idx);
    const uint32_t k_base = SmemAddr(s_k + stage * S::kKBytes);

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
    // Every warp is past its Q K^T: the next item's query tile may overwrite s_q.
    if (has_next) {
      load_q(next_item);
      CpAsyncCommit();
    }

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

    stage ^= 1;
    if (!last) {
      ++tile;
      continue;
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
    if (!has_next) break;
    item = next_item;
    idx = next_idx;
    tile = 0;
    num_tiles = (item.key_end - item.key_begin + kMlaTileKeys - 1) / kMlaTileKeys;
    set_limits(item);
    reset();
  }
}

// ------------------------------------------------------------------ absorbed, wgmma (64 rows)
//
// Two warpgroups share one 64-row query tile. Shared memory holds Q and the cache tiles
// in the canonical 128-byte-swizzled layout of wgmma: slabs of 64 rows x 64 bf16 (8 KiB),
// row r of a slab at r * 128 bytes with its 16-byte chunks XOR-permuted by r % 8. Per
// tile of 64 keys, warpgroup w computes S = Q K^T for keys [32w, 32w + 32) (m64n32k16,
// both operands from shared memory), the warpgroups exchange row maxima, write their
// probabilities into one 64 x 64 slab, and warpgroup w accumulates output columns
// [256w, 256w + 256) with P (shared, K-major) times V (the cache tile, MN-major).
constexpr int kSlabBytes = 64 * 128;
constexpr int kSlabs = kD / 64;  // 9
constexpr int kWgTileBytes = kSlabs * kSlabBytes;
constexpr int kWgSmemBytes = 1024 /* alignment */ + 3 * kWgTileBytes + kSlabBytes + 4 * 64 * 4;

__device__ __forceinline__ int SlabOffset(int row, int chunk) {
  return (chunk >> 3) * kSlabBytes + row * 128 + (((chunk & 7) ^ (row & 7)) << 4);
}

// The warpgroup kernels' loads (both kernels below share them), in 64-column
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

__device__ __forceinline__ void WgLoadTile(uint8_t* s_stage, const MlaWorkItem& it, int tile,
                                           const MlaAbsorbedParams& p, int tid) {
  const int key0 = it.key_begin + tile * kMlaTileKeys;
  const uint32_t dst = SmemAddr(s_stage);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = (tid >> 3) + 32 * i;
    const int key = key0 + r;
    const bool valid = key < it.key_end;
    const bf16* src = valid ? CacheRow(p, it.table, key) : p.cache;
    const int c0 = tid & 7;
    const uint32_t dst_row = dst + r * 128 + ((c0 ^ (r & 7)) << 4);
#pragma unroll
    for (int j = 0; j < kSlabs; ++j) CpAsync16(dst_row + j * kSlabBytes, src + (c0 + 8 * j) * 8, valid);
  }
}

// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride
// byte offsets (K-major: LBO unused, SBO = 8-row group stride; MN-major: LBO = stride of
// 64-element MN blocks, SBO = 8-row K group stride).
__device__ __forceinline__ uint64_t SmemDesc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32) | (uint64_t{1} << 62);
}
__device__ __forceinline__ uint64_t KMajorDesc(uint32_t addr) { return SmemDesc(addr, 16, 1024); }
__device__ __forceinline__ uint64_t MnMajorDesc(uint32_t addr) { return SmemDesc(addr, kSlabBytes, 1024); }

__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaWaitAll() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void FenceProxyAsync() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void FenceRegs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

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

template <bool kOverlap>
__global__ void __launch_bounds__(kThreads, 1)
    MlaAbsorbedWgKernel(const MlaWorkItem* __restrict__ items, int num_items, const MlaAbsorbedParams p, int flags) {
  extern __shared__ __align__(128) uint8_t smem_raw[];
  // 1024-byte alignment: the swizzle pattern is taken from address bits 4-9.
  uint8_t* const s_q = smem_raw + ((1024 - (SmemAddr(smem_raw) & 1023)) & 1023);
  uint8_t* const s_k = s_q + kWgTileBytes;  // two stages
  uint8_t* const s_p = s_k + 2 * kWgTileBytes;
  float* const s_max = reinterpret_cast<float*>(s_p + kSlabBytes);  // [2][64]
  float* const s_sum = s_max + 2 * 64;                              // [2][64]

  int idx = blockIdx.x;
  if (idx >= num_items) return;
  MlaWorkItem item = items[idx];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wq = warp & 3;
  const int g = lane >> 2, t4 = lane & 3;
  const float sl2 = p.softmax_scale * kLog2e;

  auto load_q = [&](const MlaWorkItem& it) { WgLoadQuery(s_q, it, p, tid); };
  auto load_tile = [&](const MlaWorkItem& it, int tile, int stage) {
    WgLoadTile(s_k + stage * kWgTileBytes, it, tile, p, tid);
  };
  // L2 prefetch of the cache rows of the step after the next one (one bulk prefetch
  // per row): the cp.async of the next step then mostly hits L2.
  auto prefetch_tile = [&](const MlaWorkItem& it, int tile) {
    const int key = it.key_begin + tile * kMlaTileKeys + tid;
    if (key < it.key_end) {
      PrefetchL2(CacheRow(p, it.table, key), kRowBytes);
    }
  };
  auto prefetch_ahead = [&](const MlaWorkItem& it, int tile, int num_tiles, int next_idx) {
    if (tid >= kMlaTileKeys) return;
    if (tile + 2 < num_tiles) {
      prefetch_tile(it, tile + 2);
    } else if (next_idx < num_items) {
      const MlaWorkItem next = items[next_idx];
      const int k = tile + 2 - num_tiles;
      if (next.key_begin + k * kMlaTileKeys < next.key_end) prefetch_tile(next, k);
    }
  };
  load_q(item);
  load_tile(item, 0, 0);
  CpAsyncCommit();

  // This thread's rows (both warpgroups hold all 64 rows): 16 wq + g and + 8.
  const int row0 = 16 * wq + g;
  int limit[2];
  auto set_limits = [&](const MlaWorkItem& it) {
#pragma unroll
    for (int h = 0; h < 2; ++h) limit[h] = min(it.prefix + (it.seq_row + row0 + 8 * h) / p.heads + 1, it.key_end);
  };
  set_limits(item);
  int num_tiles = (item.key_end - item.key_begin + kMlaTileKeys - 1) / kMlaTileKeys;

  // Accumulator layouts (per warp, rows 16 wq..): element 4 n + 2 h + e is row g + 8 h,
  // column 8 n + 2 t4 + e of the warpgroup's slice.
  float o[128];
  float m[2], l[2];
  auto reset = [&]() {
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] = 0.0f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
  };
  reset();
  const uint32_t q_addr = SmemAddr(s_q), p_addr = SmemAddr(s_p);

  int tile = 0, stage = 0;
  while (true) {
    CpAsyncWaitAll();
    FenceProxyAsync();  // cp.async data (generic proxy) -> wgmma operand reads (async proxy)
    __syncthreads();
    const int next_idx = idx + gridDim.x;
    const bool last = tile + 1 == num_tiles;
    const bool has_next = last && next_idx < num_items;
    constexpr bool overlap = kOverlap;
    const MlaWorkItem next_item = has_next ? items[next_idx] : item;
    auto load_next = [&]() {
      if (!last) {
        load_tile(item, tile + 1, stage ^ 1);
      } else if (has_next) {
        load_tile(next_item, 0, stage ^ 1);
      }
      CpAsyncCommit();
    };
    if constexpr (!overlap) load_next();
    if (flags & kMlaPrefetch) prefetch_ahead(item, tile, num_tiles, next_idx);
    const uint32_t k_addr = SmemAddr(s_k + stage * kWgTileBytes);

    // ---- S = Q K^T, keys [32 wg, 32 wg + 32) of the tile
    float s[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) s[i] = 0.0f;
    FenceRegs(s);
    WgmmaFence();
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      const uint32_t off = (ks >> 2) * kSlabBytes + (ks & 3) * 32;
      WgmmaQk(s, KMajorDesc(q_addr + off), KMajorDesc(k_addr + wg * 32 * 128 + off));
    }
    WgmmaCommit();
    WgmmaWaitAll();  // (with overlap, also the previous tile's P V)
    FenceRegs(s);
    FenceRegs(o);

    const int key_base = item.key_begin + tile * kMlaTileKeys + 32 * wg + 2 * t4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < 4; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[4 * n + 2 * h + e];
          if (key_base + 8 * n + e >= limit[h]) v = -INFINITY;
          mx = fmaxf(mx, v);
        }
      }
      mx = QuadMax(mx);
      if (t4 == 0) s_max[wg * 64 + row0 + 8 * h] = mx;
    }
    __syncthreads();
    // Both warpgroups are past Q K^T (and, with overlap, past the previous P V, so the
    // other stage is free).
    if constexpr (overlap) load_next();
    if (has_next) {
      load_q(next_item);
      CpAsyncCommit();
    }

#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row0 + 8 * h;
      const float m_new = fmaxf(m[h], fmaxf(s_max[r], s_max[64 + r]));
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float neg = -m_use * sl2;
      const float alpha = exp2f(fmaf(m[h], sl2, neg));
      m[h] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        const uint32_t packed =
            PackBf16(exp2f(fmaf(s[4 * n + 2 * h], sl2, neg)), exp2f(fmaf(s[4 * n + 2 * h + 1], sl2, neg)));
        const float2 rounded = UnpackBf16(packed);
        sum += rounded.x + rounded.y;
        const int chunk = 4 * wg + n;  // keys 32 wg + 8 n .. of the P slab row
        *reinterpret_cast<uint32_t*>(s_p + r * 128 + ((chunk ^ (r & 7)) << 4) + 4 * t4) = packed;
      }
      l[h] = l[h] * alpha + sum;
#pragma unroll
      for (int n = 0; n < 32; ++n) {
        o[4 * n + 2 * h] *= alpha;
        o[4 * n + 2 * h + 1] *= alpha;
      }
    }
    FenceProxyAsync();  // P stores -> wgmma reads
    __syncthreads();

    // ---- O[:, 256 wg ..] += P V: A = P (64 x 64, K-major), B = the tile's dims
    // [256 wg, 256 wg + 256) (slabs 4 wg.. 4 wg + 3, MN-major), 16 keys per step.
    FenceRegs(o);
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kMlaTileKeys / 16; ++kk) {
      WgmmaPv(o, KMajorDesc(p_addr + kk * 32), MnMajorDesc(k_addr + 4 * wg * kSlabBytes + kk * 16 * 128));
    }
    WgmmaCommit();
    // With overlap, P V runs on while the next tile's data is awaited and its Q K^T
    // issued (the loop goes back to the top without touching o).
    if constexpr (!overlap) {
      WgmmaWaitAll();
      FenceRegs(o);
    }
    stage ^= 1;
    if (!last) {
      ++tile;
      continue;
    }
    if constexpr (overlap) {
      WgmmaWaitAll();
      FenceRegs(o);
    }

    // ---- epilogue
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float sum = QuadSum(l[h]);
      if (t4 == 0) s_sum[wg * 64 + row0 + 8 * h] = sum;
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row0 + 8 * h;
      if (r >= item.num_rows) continue;
      const float total = s_sum[r] + s_sum[64 + r];
      const float inv = total > 0.0f ? 1.0f / total : 0.0f;
      const int col0 = 256 * wg + 2 * t4;
      if (item.partial < 0) {
        bf16* dst = p.out + static_cast<int64_t>(item.q_row + r) * kMlaRank + col0;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          *reinterpret_cast<uint32_t*>(dst + 8 * n) = PackBf16(o[4 * n + 2 * h] * inv, o[4 * n + 2 * h + 1] * inv);
        }
      } else {
        const int64_t prow = static_cast<int64_t>(item.partial) + r;
        float* dst = p.partial_out + prow * kMlaRank + col0;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          *reinterpret_cast<float2*>(dst + 8 * n) = make_float2(o[4 * n + 2 * h] * inv, o[4 * n + 2 * h + 1] * inv);
        }
        if (wg == 0 && t4 == 0) p.partial_lse[prow] = total > 0.0f ? m[h] * sl2 + log2f(total) : -INFINITY;
      }
    }
    if (!has_next) break;
    item = next_item;
    idx = next_idx;
    tile = 0;
    num_tiles = (item.key_end - item.key_begin + kMlaTileKeys - 1) / kMlaTileKeys;
    set_limits(item);
    reset();
  }
}

// D[64 x 64] += A * B, both from shared memory (descriptors), K-major.
__device__ __forceinline__ void WgmmaQk64(float (&d)[32], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(1));
}

// D[64 x 256] += A * B, A from registers (the m16n8k16 A layout per warp), B MN-major.
__device__ __forceinline__ void WgmmaPvRegs(float (&d)[128], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n"
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
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// ------------------------------------------------------------------ absorbed, wgmma, no exchange (64 rows)
//
// The same shared-memory layout, but each warpgroup computes the scores of all 64 keys
// (m64n64k16, the Q K^T work done twice) and so holds whole rows: its softmax needs no
// exchange with the other warpgroup, the probabilities stay in registers as the A
// operand of P V (m64n256k16, A from registers), and one barrier per tile remains
// (the stage release). Both warpgroups compute bitwise the same scores, maxima and
// sums, so their column halves are normalized alike.
constexpr int kWgSoloSmemBytes = 1024 /* alignment */ + 3 * kWgTileBytes;

__global__ void __launch_bounds__(kThreads, 1)
    MlaAbsorbedWgSoloKernel(const MlaWorkItem* __restrict__ items, int num_items, const MlaAbsorbedParams p) {
  extern __shared__ __align__(128) uint8_t smem_raw[];
  uint8_t* const s_q = smem_raw + ((1024 - (SmemAddr(smem_raw) & 1023)) & 1023);
  uint8_t* const s_k = s_q + kWgTileBytes;  // two stages

  int idx = blockIdx.x;
  if (idx >= num_items) return;
  MlaWorkItem item = items[idx];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wq = warp & 3;
  const int g = lane >> 2, t4 = lane & 3;
  const float sl2 = p.softmax_scale * kLog2e;

  auto load_q = [&](const MlaWorkItem& it) { WgLoadQuery(s_q, it, p, tid); };
  auto load_tile = [&](const MlaWorkItem& it, int tile, int stage) {
    WgLoadTile(s_k + stage * kWgTileBytes, it, tile, p, tid);
  };
  load_q(item);
  load_tile(item, 0, 0);
  CpAsyncCommit();

  const int row0 = 16 * wq + g;
  int limit[2];
  auto set_limits = [&](const MlaWorkItem& it) {
#pragma unroll
    for (int h = 0; h < 2; ++h) limit[h] = min(it.prefix + (it.seq_row + row0 + 8 * h) / p.heads + 1, it.key_end);
  };
  set_limits(item);
  int num_tiles = (item.key_end - item.key_begin + kMlaTileKeys - 1) / kMlaTileKeys;

  float o[128];
  float m[2], l[2];
  auto reset = [&]() {
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] = 0.0f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
  };
  reset();
  const uint32_t q_addr = SmemAddr(s_q);

  int tile = 0, stage = 0;
  while (true) {
    CpAsyncWaitAll();
    FenceProxyAsync();
    __syncthreads();  // the tile is in; both warpgroups are done with the other stage
    const int next_idx = idx + gridDim.x;
    const bool last = tile + 1 == num_tiles;
    const bool has_next = last && next_idx < num_items;
    const MlaWorkItem next_item = has_next ? items[next_idx] : item;
    if (!last) {
      load_tile(item, tile + 1, stage ^ 1);
    } else if (has_next) {
      load_tile(next_item, 0, stage ^ 1);
    }
    CpAsyncCommit();
    const uint32_t k_addr = SmemAddr(s_k + stage * kWgTileBytes);

    // ---- S = Q K^T for all 64 keys of the tile (element 4 n + 2 h + e: row g + 8 h, key 8 n + 2 t4 + e)
    float s[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) s[i] = 0.0f;
    FenceRegs(s);
    WgmmaFence();
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      const uint32_t off = (ks >> 2) * kSlabBytes + (ks & 3) * 32;
      WgmmaQk64(s, KMajorDesc(q_addr + off), KMajorDesc(k_addr + off));
    }
    WgmmaCommit();
    WgmmaWaitAll();
    FenceRegs(s);
    if (has_next) {  // s_q is free once both warpgroups are past Q K^T
      __syncthreads();
      load_q(next_item);
      CpAsyncCommit();
    }

    // ---- softmax over whole rows (the quad holds a row), P into A fragments
    const int key_base = item.key_begin + tile * kMlaTileKeys + 2 * t4;
    uint32_t pf[4][4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[4 * n + 2 * h + e];
          if (key_base + 8 * n + e >= limit[h]) v = -INFINITY;
          mx = fmaxf(mx, v);
        }
      }
      mx = QuadMax(mx);
      const float m_new = fmaxf(m[h], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float neg = -m_use * sl2;
      const float alpha = exp2f(fmaf(m[h], sl2, neg));
      m[h] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const uint32_t packed =
            PackBf16(exp2f(fmaf(s[4 * n + 2 * h], sl2, neg)), exp2f(fmaf(s[4 * n + 2 * h + 1], sl2, neg)));
        const float2 rounded = UnpackBf16(packed);
        sum += rounded.x + rounded.y;
        // (row g + 8 h, keys 8 n + 2 t4 ..) -> k step n / 2, register (n & 1) * 2 + h
        pf[n >> 1][(n & 1) * 2 + h] = packed;
      }
      l[h] = l[h] * alpha + sum;
#pragma unroll
      for (int n = 0; n < 32; ++n) {
        o[4 * n + 2 * h] *= alpha;
        o[4 * n + 2 * h + 1] *= alpha;
      }
    }

    // ---- O[:, 256 wg ..] += P V
    FenceRegs(o);
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kMlaTileKeys / 16; ++kk) {
      WgmmaPvRegs(o, pf[kk], MnMajorDesc(k_addr + 4 * wg * kSlabBytes + kk * 16 * 128));
    }
    WgmmaCommit();
    WgmmaWaitAll();
    FenceRegs(o);

    stage ^= 1;
    if (!last) {
      ++tile;
      continue;
    }

    // ---- epilogue: both warpgroups hold the same row sums
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row0 + 8 * h;
      const float total = QuadSum(l[h]);
      if (r >= item.num_rows) continue;
      const float inv = total > 0.0f ? 1.0f / total : 0.0f;
      const int col0 = 256 * wg + 2 * t4;
      if (item.partial < 0) {
        bf16* dst = p.out + static_cast<int64_t>(item.q_row + r) * kMlaRank + col0;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          *reinterpret_cast<uint32_t*>(dst + 8 * n) = PackBf16(o[4 * n + 2 * h] * inv, o[4 * n + 2 * h + 1] * inv);
        }
      } else {
        const int64_t prow = static_cast<int64_t>(item.partial) + r;
        float* dst = p.partial_out + prow * kMlaRank + col0;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          *reinterpret_cast<float2*>(dst + 8 * n) = make_float2(o[4 * n + 2 * h] * inv, o[4 * n + 2 * h + 1] * inv);
        }
        if (wg == 0 && t4 == 0) p.partial_lse[prow] = total > 0.0f ? m[h] * sl2 + log2f(total) : -INFINITY;
      }
    }
    if (!has_next) break;
    item = next_item;
    idx = next_idx;
    tile = 0;
    num_tiles = (item.key_end - item.key_begin + kMlaTileKeys - 1) / kMlaTileKeys;
    set_limits(item);
    reset();
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
    const int64_t offset =
        ((static_cast<int64_t>(block) * p.layers + p.layer) * p.block_size + key % p.block_size) * dims;
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

// rank 512: one CTA per (tile, row); four groups of 128 threads (a float4 column each)
// take splits g, g + 4, ... with several loads in flight, and the groups' sums are
// added in group order (deterministic).
constexpr int kCombine512Threads = 512;
constexpr int kCombineGroups = kCombine512Threads / 128;

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
  uint8_t* const s_k = smem + S::kQBytes;     // two stages
  uint8_t* const s_v = s_k + 2 * S::kKBytes;  // two stages
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
    const bf16* src =
        c < nope_chunks ? p.q_nope + row * p.nope + c * 8 : p.q_rope + row * p.rope + (c - nope_chunks) * 8;
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
        const uint32_t packed =
            PackBf16(exp2f(fmaf(s[nt][2 * hh], sl2, neg)), exp2f(fmaf(s[nt][2 * hh + 1], sl2, neg)));
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
      for (int j = 0; j < jn; ++j)
        acc += s_score[j] * __bfloat162float(p.v[((j0 + j) * static_cast<int64_t>(H) + h) * p.dv + d]);
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

std::atomic<int> g_variant{kMlaDefaultVariant};

// CTAs that fit on the device at once (one per SM), cached per device.
int SmCount() {
  static std::atomic<int> counts[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 132;
  int n = counts[device & 63].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) n = 132;
    counts[device & 63].store(n, std::memory_order_relaxed);
  }
  return n;
}

int GridFor(int num_items) {
  return (g_variant.load(std::memory_order_relaxed) & kMlaPersistent) ? std::min(num_items, SmCount()) : num_items;
}

template <int kMT, int kWM>
cudaError_t LaunchTc(const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params, cudaStream_t stream) {
  static std::atomic<uint64_t> done{0};
  constexpr int smem = TileShape<kMT, kWM>::kSmemBytes;
  cudaError_t err = AllowSmem(reinterpret_cast<const void*>(&MlaAbsorbedTcKernel<kMT, kWM>), smem, done);
  if (err != cudaSuccess) return err;
  MlaAbsorbedTcKernel<kMT, kWM>
      <<<GridFor(num_items), kThreads, smem, stream>>>(items, num_items, params, g_variant.load());
  return cudaGetLastError();
}

cudaError_t LaunchWgSolo(const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params,
                         cudaStream_t stream) {
  static std::atomic<uint64_t> done{0};
  cudaError_t err = AllowSmem(reinterpret_cast<const void*>(&MlaAbsorbedWgSoloKernel), kWgSoloSmemBytes, done);
  if (err != cudaSuccess) return err;
  MlaAbsorbedWgSoloKernel<<<GridFor(num_items), kThreads, kWgSoloSmemBytes, stream>>>(items, num_items, params);
  return cudaGetLastError();
}

template <bool kOverlap>
cudaError_t LaunchWg(const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params, cudaStream_t stream) {
  static std::atomic<uint64_t> done{0};
  cudaError_t err = AllowSmem(reinterpret_cast<const void*>(&MlaAbsorbedWgKernel<kOverlap>), kWgSmemBytes, done);
  if (err != cudaSuccess) return err;
  MlaAbsorbedWgKernel<kOverlap>
      <<<GridFor(num_items), kThreads, kWgSmemBytes, stream>>>(items, num_items, params, g_variant.load());
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
      if (const int v = g_variant.load(std::memory_order_relaxed); v & kMlaWgmma) {
        if (v & kMlaWgmmaSolo) return LaunchWgSolo(items, num_items, params, stream);
        return (v & kMlaOverlap) ? LaunchWg<true>(items, num_items, params, stream)
                                 : LaunchWg<false>(items, num_items, params, stream);
      }
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

void MlaSetVariant(int flags) { g_variant.store(flags, std::memory_order_relaxed); }
int MlaVariant() { return g_variant.load(std::memory_order_relaxed); }

cudaError_t MlaCombine(const MlaCombineItem* items, int num_items, int max_rows, const float* partial_out,
                       const float* partial_lse, int rank, __nv_bfloat16* out, cudaStream_t stream) {
  if (num_items == 0) return cudaSuccess;
  if (rank == kMlaRank && max_rows <= 65535) {
    MlaCombine512Kernel<<<dim3(num_items, max_rows), kCombine512Threads, 0, stream>>>(items, partial_out, partial_lse,
                                                                                      out);
    return cudaGetLastError();
  }
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
