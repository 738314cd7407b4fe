// MlaExpanded: the expanded (prefill) form for one sequence: on wgmma for the
// dims of DeepSeek (qk 192, v 128; expanded_wg.cu), on mma.sync for the tiny
// fixture's (48, 32), else on CUDA cores.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/mla/device.cuh"
#include "kernels/cuda/mla/launch.h"

namespace mlaserve::cuda::mla {
namespace {

// FlashAttention-2 style for one sequence: a CTA of 4 warps takes 64 queries of one
// head, each warp 16 of them; keys in tiles of 64 (K = k_nope ++ k_rope, V) through a
// two-stage cp.async pipeline; the probabilities stay in registers (the accumulator
// layout of S is the A-operand layout of P V). Rows padded by 16 bytes in shared memory.

template <int kDqk, int kDv>
__global__ void __launch_bounds__(kExpThreads) MlaExpandedTcKernel(const MlaExpandedParams p) {
  using S = ExpShape<kDqk, kDv>;
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* const s_q = smem;
  uint8_t* const s_k = smem + S::kQBytes;     // two stages
  uint8_t* const s_v = s_k + 2 * S::kKBytes;  // two stages
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3, lo = lane & 7;
  // The last query tiles see the most keys: they go first, so that the short ones fill the tail.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kExpRows, h = blockIdx.y;
  const int T = p.num_queries, num_keys = p.num_keys, H = p.heads, QH = p.q_heads;
  const int nope_chunks = p.nope / 8;
  constexpr int kQkChunks = kDqk / 8, kVChunks = kDv / 8;
  const float sl2 = p.softmax_scale * kLog2e;

  for (int i = tid; i < kExpRows * kQkChunks; i += kExpThreads) {
    const int r = i / kQkChunks, c = i % kQkChunks;
    const bool valid = q0 + r < T;
    const int64_t row = static_cast<int64_t>(valid ? q0 + r : q0) * QH + h;
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
    OnlineSoftmax<kExpKeys>([&](int n, int i) -> float& { return s[n][i]; }, tile * kExpKeys, pos, sl2, t4, pf, m, l,
                            [&](int hh, float alpha) {
#pragma unroll
                              for (int nt = 0; nt < kDv / 8; ++nt) {
                                o[nt][2 * hh] *= alpha;
                                o[nt][2 * hh + 1] *= alpha;
                              }
                            });
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
    bf16* dst = p.out + (static_cast<int64_t>(q) * QH + h) * p.dv + 2 * t4;
#pragma unroll
    for (int nt = 0; nt < kDv / 8; ++nt) {
      *reinterpret_cast<uint32_t*>(dst + nt * 8) = PackBf16(o[nt][2 * hh] * inv, o[nt][2 * hh + 1] * inv);
    }
  }
}

// Any dims (dv up to 4 * 128): one CTA per (query, head), keys in chunks of 128 with an
// online softmax; CUDA cores.

__global__ void __launch_bounds__(kGenericThreads) MlaExpandedGenericKernel(const MlaExpandedParams p) {
  extern __shared__ __align__(128) uint8_t smem[];
  float* const s_score = reinterpret_cast<float*>(smem);  // [kExpGenericChunk]
  float* const s_red = s_score + kExpGenericChunk;        // [32]
  float* const s_q = s_red + 32;                          // [nope + rope]
  const int t = blockIdx.x, h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int H = p.heads, dqk = p.nope + p.rope;
  const int64_t qrow = static_cast<int64_t>(t) * p.q_heads + h;
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
}  // namespace mlaserve::cuda::mla

namespace mlaserve::cuda {

cudaError_t MlaExpanded(const MlaExpandedParams& params, cudaStream_t stream) {
  if (params.num_queries == 0 || params.heads == 0) return cudaSuccess;
  if (params.num_queries > params.num_keys) return cudaErrorInvalidValue;
  const int dqk = params.nope + params.rope;
  auto aligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; };
  if (params.nope % 8 == 0 && params.rope % 8 == 0 && aligned(params.q_nope) && aligned(params.q_rope) &&
      aligned(params.k_nope) && aligned(params.k_rope) && aligned(params.v) && aligned(params.out)) {
    if (params.nope == 128 && params.rope == 64 && params.dv == 128) return mla::LaunchExpandedWg(params, stream);
    if (dqk == 48 && params.dv == 32) return mla::LaunchExpandedTc<48, 32>(params, stream);
  }
  if (params.dv > kMlaExpandedMaxDv || dqk > kMlaGenericMaxDims) return cudaErrorInvalidValue;
  static_assert(kMlaExpandedMaxDv <= mla::kGenericThreads * mla::kExpGenericMaxDvPerThread);
  static std::atomic<uint64_t> done{0};
  constexpr int kMaxSmem = (mla::kExpGenericChunk + 32 + kMlaGenericMaxDims) * 4;
  const int smem = (mla::kExpGenericChunk + 32 + dqk) * 4;
  cudaError_t err = mla::AllowSmem(reinterpret_cast<const void*>(&mla::MlaExpandedGenericKernel), kMaxSmem, done);
  if (err != cudaSuccess) return err;
  mla::MlaExpandedGenericKernel<<<dim3(params.num_queries, params.heads), mla::kGenericThreads, smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace mlaserve::cuda
