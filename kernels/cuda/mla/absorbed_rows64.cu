// The absorbed kernel for tiles of 64 rows (DeepSeek-V3's 128 heads, or 16 heads
// with several query tokens), on wgmma.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/mla/device.cuh"
#include "kernels/cuda/mla/launch.h"

namespace mlaserve::cuda::mla {
namespace {

// Two warpgroups share one 64-row query tile. Shared memory holds Q and the cache tiles
// in the canonical 128-byte-swizzled layout of wgmma: slabs of 64 rows x 64 bf16 (8 KiB),
// row r of a slab at r * 128 bytes with its 16-byte chunks XOR-permuted by r % 8. Per
// tile of 64 keys, warpgroup w computes S = Q K^T for keys [32w, 32w + 32) (m64n32k16,
// both operands from shared memory), the warpgroups exchange row maxima, write their
// probabilities into one 64 x 64 slab, and warpgroup w accumulates output columns
// [256w, 256w + 256) with P (shared, K-major) times V (the cache tile, MN-major).
// A tile's P V runs on while the next tile's data is awaited and its Q K^T issued.
template <bool kFp8>
__global__ void __launch_bounds__(kThreads, 1)
    MlaAbsorbedWgKernel(const MlaWorkItem* __restrict__ items, int num_items, const MlaAbsorbedParams p) {
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
  // An FP8 tile lands from registers once the current tile's P V is issued.
  Fp8TileRegs staged;
  auto load_tile = [&](const MlaWorkItem& it, int tile, int stage) {
    if constexpr (kFp8) {
      IssueFp8Tile</*kRowStride=*/128, /*kGroupStride=*/kSlabBytes>(staged, SmemAddr(s_k + stage * kWgTileBytes), it,
                                                                    tile, p, tid);
    } else {
      WgLoadTile(s_k + stage * kWgTileBytes, it, tile, p, tid);
    }
  };
  auto land_tile = [&](int stage) {
    if constexpr (kFp8) LandFp8Tile<128, kSlabBytes>(staged, SmemAddr(s_k + stage * kWgTileBytes), tid);
  };
  load_q(item);
  load_tile(item, 0, 0);
  land_tile(0);
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
    const MlaWorkItem next_item = has_next ? items[next_idx] : item;
    auto load_next = [&]() {
      if (!last) {
        load_tile(item, tile + 1, stage ^ 1);
      } else if (has_next) {
        load_tile(next_item, 0, stage ^ 1);
      }
      CpAsyncCommit();
    };
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
    WgmmaWaitAll();  // also the previous tile's P V
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
    // Both warpgroups are past Q K^T and the previous P V: the other stage is free.
    load_next();
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
    if (!last || has_next) land_tile(stage ^ 1);
    // P V runs on while the next tile's data is awaited and its Q K^T issued (the
    // loop goes back to the top without touching o).
    stage ^= 1;
    if (!last) {
      ++tile;
      continue;
    }
    WgmmaWaitAll();
    FenceRegs(o);

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

}  // namespace

cudaError_t LaunchRows64(const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params, cudaStream_t stream) {
  static std::atomic<uint64_t> done{0}, done_fp8{0};
  const bool fp8 = params.fp8_cache != nullptr;
  auto* kernel = fp8 ? &MlaAbsorbedWgKernel<true> : &MlaAbsorbedWgKernel<false>;
  cudaError_t err = AllowSmem(reinterpret_cast<const void*>(kernel), kWgSmemBytes, fp8 ? done_fp8 : done);
  if (err != cudaSuccess) return err;
  kernel<<<PersistentGrid(num_items), kThreads, kWgSmemBytes, stream>>>(items, num_items, params);
  return cudaGetLastError();
}

}  // namespace mlaserve::cuda::mla
