// The absorbed kernel for tiles of 16 rows (up to 16 heads): mma.sync m16n8k16 with
// ldmatrix; the query tile stays in shared memory, the cache rows of 64 keys are
// gathered through the block table with cp.async (double-buffered; an FP8 cache's
// through registers, dequantized) and read from there by all rows of the tile.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/mla/device.cuh"
#include "kernels/cuda/mla/launch.h"

namespace mlaserve::cuda::mla {
namespace {

// The per-row state and the work item a CTA is on. Persistent CTAs (grid smaller than
// the item count) take items blockIdx.x, blockIdx.x + gridDim.x, ...; while the last
// tile of an item is computed, the first cache tile of the next item is already loading
// into the free stage, and its query tile is loaded as soon as the last Q K^T is done.
template <int kMT, int kWM, bool kFp8>
__global__ void __launch_bounds__(kThreads, 1)
    MlaAbsorbedTcKernel(const MlaWorkItem* __restrict__ items, int num_items, const MlaAbsorbedParams p) {
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
  // Whole cache rows of 1152 bytes, 128-byte chunk groups. An FP8 tile lands from
  // registers once the current tile's math is issued.
  Fp8TileRegs staged;
  auto load_tile = [&](const MlaWorkItem& it, int tile, int stage) {
    const uint32_t dst = SmemAddr(s_k + stage * S::kKBytes);
    if constexpr (kFp8) {
      IssueFp8Tile</*kRowStride=*/kRowBytes, /*kGroupStride=*/128>(staged, dst, it, tile, p, tid);
    } else {
      LoadCacheTile</*kRowStride=*/kRowBytes, /*kGroupStride=*/128>(dst, it, tile, p, tid);
    }
  };
  auto land_tile = [&](int stage) {
    if constexpr (kFp8) LandFp8Tile<kRowBytes, 128>(staged, SmemAddr(s_k + stage * S::kKBytes), tid);
  };
  load_q(item);
  load_tile(item, 0, 0);
  land_tile(0);
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
    if (!last || has_next) land_tile(stage ^ 1);

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

}  // namespace

cudaError_t LaunchRows16(const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params, cudaStream_t stream) {
  static std::atomic<uint64_t> done{0};
  static std::atomic<uint64_t> done_fp8{0};
  constexpr int smem = Rows16Tile::kSmemBytes;
  const bool fp8 = params.fp8_cache != nullptr;
  auto* kernel = fp8 ? &MlaAbsorbedTcKernel<1, 1, true> : &MlaAbsorbedTcKernel<1, 1, false>;
  cudaError_t err = AllowSmem(reinterpret_cast<const void*>(kernel), smem, fp8 ? done_fp8 : done);
  if (err != cudaSuccess) return err;
  kernel<<<PersistentGrid(num_items), kThreads, smem, stream>>>(items, num_items, params);
  return cudaGetLastError();
}

}  // namespace mlaserve::cuda::mla
