// The expanded (prefill) form at DeepSeek's dims on wgmma: nope 128 + rope 64
// against keys, v 128, one sequence.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/mla/device.cuh"
#include "kernels/cuda/mla/launch.h"

namespace mlaserve::cuda::mla {
namespace {

constexpr int kNope = 128, kRope = 64, kDv = 128;
constexpr int kQkChunks = (kNope + kRope) / 8, kNopeChunks = kNope / 8, kVChunks = kDv / 8;

// A CTA takes 128 queries of one head; warpgroup w owns queries [64 w, 64 w + 64).
// Per tile of 64 keys each warpgroup computes S = Q K^T (m64n64k16, Q and K from
// shared memory), its rows' online softmax in registers, and O += P V (m64n128k16)
// with P straight from the S accumulators (their layout is the A fragment's) and V
// from shared memory. All 256 threads load the next tile with cp.async while the
// current one is computed, and one warpgroup's softmax runs while the other's
// wgmmas do. Both warpgroups read every tile, so a tile leaves L2 once per
// 128 queries.

// Queries [q0, q0 + 128) of head h: warpgroup w's 64 rows in slabs [3 w, 3 w + 3)
// (q_nope's two, q_rope's); rows past the sequence zero-filled.
__device__ __forceinline__ void LoadQueries(uint32_t s_q, const MlaExpandedParams& p, int q0, int h, int tid) {
  for (int i = tid; i < kExpWgRows * kQkChunks; i += kExpWgThreads) {
    const int r = i / kQkChunks, c = i % kQkChunks;
    const bool valid = q0 + r < p.num_queries;
    const int64_t row = static_cast<int64_t>(valid ? q0 + r : 0) * p.q_heads + h;
    const bf16* src = c < kNopeChunks ? p.q_nope + row * kNope + c * 8 : p.q_rope + row * kRope + (c - kNopeChunks) * 8;
    CpAsync16(s_q + (r >> 6) * kExpWgQkSlabs * kSlabBytes + SlabOffset(r & 63, c), src, valid);
  }
}

// The 64 keys of `tile` of head h: K (k_nope ++ k_rope) in three slabs, then V in
// two; keys past the sequence zero-filled (their probabilities are 0, and
// 0 * garbage could be NaN).
__device__ __forceinline__ void LoadKeys(uint32_t s_stage, const MlaExpandedParams& p, int tile, int h, int tid) {
  for (int i = tid; i < kExpWgKeys * (kQkChunks + kVChunks); i += kExpWgThreads) {
    const int r = i / (kQkChunks + kVChunks), c = i % (kQkChunks + kVChunks);
    const int key = tile * kExpWgKeys + r;
    const bool valid = key < p.num_keys;
    const int64_t k = valid ? key : 0;
    const bf16* src = c < kNopeChunks  ? p.k_nope + (k * p.heads + h) * kNope + c * 8
                      : c < kQkChunks ? p.k_rope + k * kRope + (c - kNopeChunks) * 8
                                      : p.v + (k * p.heads + h) * kDv + (c - kQkChunks) * 8;
    CpAsync16(s_stage + SlabOffset(r, c), src, valid);
  }
}

__global__ void __launch_bounds__(kExpWgThreads, 1) MlaExpandedWgKernel(const MlaExpandedParams p) {
  extern __shared__ __align__(128) uint8_t smem_raw[];
  // 1024-byte alignment: the swizzle pattern is taken from address bits 4-9.
  const uint32_t s_q = SmemAddr(smem_raw) + ((1024 - (SmemAddr(smem_raw) & 1023)) & 1023);
  const uint32_t s_kv = s_q + kExpWgQBytes;  // two stages
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wq = warp & 3;
  const int g = lane >> 2, t4 = lane & 3;
  // The last query tiles see the most keys: they go first, so that the short ones fill the tail.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kExpWgRows, h = blockIdx.y;
  const int T = p.num_queries, num_keys = p.num_keys;
  const float sl2 = p.softmax_scale * kLog2e;

  LoadQueries(s_q, p, q0, h, tid);
  LoadKeys(s_kv, p, 0, h, tid);
  CpAsyncCommit();
  const int last_pos = num_keys - T + min(q0 + kExpWgRows - 1, T - 1);
  const int num_tiles = last_pos / kExpWgKeys + 1;

  // This thread's rows: 64 wg + 16 wq + g (+ 8); the key each sees last.
  int pos[2];
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) pos[hh] = min(num_keys - T + q0 + 64 * wg + 16 * wq + g + 8 * hh, num_keys - 1);
  // Accumulators: element 4 j + 2 hh + e is row g + 8 hh of the warp's 16, column 8 j + 2 t4 + e.
  float o[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  uint32_t pf[kExpWgKeys / 16][4];  // P as the A fragments of P V's four k16 steps
  const uint32_t q_addr = s_q + wg * kExpWgQkSlabs * kSlabBytes;

  for (int tile = 0, stage = 0; tile < num_tiles; ++tile, stage ^= 1) {
    CpAsyncWaitAll();
    FenceProxyAsync();  // cp.async data (generic proxy) -> wgmma operand reads (async proxy)
    // Both warpgroups have this tile's data and are done with the other stage (their
    // previous P V was waited for): the next tile loads into it during this one.
    __syncthreads();
    if (tile + 1 < num_tiles) LoadKeys(s_kv + (stage ^ 1) * kExpWgStageBytes, p, tile + 1, h, tid);
    CpAsyncCommit();
    const uint32_t k_addr = s_kv + stage * kExpWgStageBytes;
    const uint32_t v_addr = k_addr + kExpWgQkSlabs * kSlabBytes;

    // ---- S = Q K^T over the 192 dims, 16 per step.
    float s[32];
    WgmmaFence();
#pragma unroll
    for (int ks = 0; ks < (kNope + kRope) / 16; ++ks) {
      const uint32_t off = (ks >> 2) * kSlabBytes + (ks & 3) * 32;
      WgmmaQk64(s, KMajorDesc(q_addr + off), KMajorDesc(k_addr + off), ks > 0);
    }
    WgmmaCommit();
    WgmmaWaitAll();
    FenceRegs(s);

    // ---- online softmax of this thread's two rows
    OnlineSoftmax<kExpWgKeys>([&](int n, int i) -> float& { return s[4 * n + i]; }, tile * kExpWgKeys, pos, sl2, t4,
                              pf, m, l, [&](int hh, float alpha) {
#pragma unroll
                                for (int j = 0; j < 16; ++j) {
                                  o[4 * j + 2 * hh] *= alpha;
                                  o[4 * j + 2 * hh + 1] *= alpha;
                                }
                              });

    // ---- O += P V, 16 keys per step (V MN-major: its two slabs of 64 dims).
    FenceRegs(o);
    for (auto& step : pf) FenceRegs(step);
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kExpWgKeys / 16; ++kk) WgmmaPv128(o, pf[kk], MnMajorDesc(v_addr + kk * 16 * 128));
    WgmmaCommit();
    // Waited for here: left in flight past the next tile's Q K^T, ptxas serializes every
    // wgmma of the loop (C7515); the other warpgroup's wgmmas fill the wait.
    WgmmaWaitAll();
    FenceRegs(o);
    for (auto& step : pf) FenceRegs(step);
  }

#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int q = q0 + 64 * wg + 16 * wq + g + 8 * hh;
    const float total = QuadSum(l[hh]);
    if (q >= T) continue;
    const float inv = 1.0f / total;
    bf16* dst = p.out + (static_cast<int64_t>(q) * p.q_heads + h) * kDv + 2 * t4;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      *reinterpret_cast<uint32_t*>(dst + 8 * j) = PackBf16(o[4 * j + 2 * hh] * inv, o[4 * j + 2 * hh + 1] * inv);
    }
  }
}

}  // namespace

cudaError_t LaunchExpandedWg(const MlaExpandedParams& params, cudaStream_t stream) {
  static std::atomic<uint64_t> done{0};
  cudaError_t err = AllowSmem(reinterpret_cast<const void*>(&MlaExpandedWgKernel), kExpWgSmemBytes, done);
  if (err != cudaSuccess) return err;
  const dim3 grid((params.num_queries + kExpWgRows - 1) / kExpWgRows, params.heads);
  MlaExpandedWgKernel<<<grid, kExpWgThreads, kExpWgSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace mlaserve::cuda::mla
