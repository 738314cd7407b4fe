#include "kernels/cuda/grouped_gemm.h"

#include <cuda_fp8.h>

#include <algorithm>

#include "kernels/cuda/ptx.h"

namespace mlaserve::cuda {
namespace {

// A CTA computes one tile's pairs against 128 rows of its weight (256 in
// FP8's prefill tiles), k in stages of 128 bytes per row (64 bf16 or 128
// e4m3 values) through a cp.async pipeline. Shared rows are 8 chunks of 16
// bytes, XOR-swizzled by row: ldmatrix over 8 rows hits 8 bank groups, and
// it is the 128-byte swizzle wgmma reads. The two formats load the same
// bytes the same way and differ in the MMA:
//   - bf16: mma.sync m16n8k16, the warps a kWarpsM x kWarpsN grid over
//     (weight rows, pairs), each warp 16 * kMT weight rows (the MMA's A) by
//     8 * kNT pairs (n8 tiles of its B);
//   - FP8: wgmma m64nNk32 (N = the tile's pairs), two warpgroups of one or
//     two m64 blocks of weight rows; a stage is one 128-column group, whose
//     products sum in a fresh float32 partial that is then added to the
//     accumulators times the group's w and x scales, which travel with the
//     stage.

constexpr int kGemmRows = 128;      // weight rows per CTA
constexpr int kGemmRowBytes = 128;  // bytes of a row per stage

struct GemmArgs {
  const char* w = nullptr;
  const float* w_scale = nullptr;  // FP8: [experts, n, k_groups]
  int64_t n = 0, k = 0;
  const char* x = nullptr;
  const float* x_scale = nullptr;  // FP8: [x rows, k_groups]
  const int32_t* x_rows = nullptr;
  const ExpertTile* tiles = nullptr;  // null: tiles of consecutive rows of one weight
  const int32_t* num_tiles = nullptr;
  int64_t rows = 0;                   // rows of x when tiles is null
  int64_t split_stages = 0;           // stages of k per split (blockIdx.z)
  __nv_bfloat16* y = nullptr;
  float* partial = nullptr;           // split k: [splits, rows, n] float32 parts instead of y
};

__device__ __forceinline__ uint32_t SwizzledChunk(int row, int chunk) {
  return row * kGemmRowBytes + ((chunk ^ (row & 7)) << 4);
}

__device__ __forceinline__ int64_t XRow(const GemmArgs& a, int pair) {
  return a.x_rows != nullptr ? static_cast<int64_t>(a.x_rows[pair]) : pair;
}

// The tile of blockIdx.y, from the list or made from the row count; false
// for a launched tile row past *num_tiles.
template <int kPairs>
__device__ __forceinline__ bool FindTile(const GemmArgs& a, ExpertTile* tile) {
  if (a.tiles != nullptr) {
    if (static_cast<int>(blockIdx.y) >= *a.num_tiles) return false;
    *tile = a.tiles[blockIdx.y];
  } else {
    tile->expert = 0;
    tile->pair_begin = static_cast<int32_t>(blockIdx.y) * kPairs;
    tile->pair_end = static_cast<int32_t>(min(static_cast<int64_t>(tile->pair_begin) + kPairs, a.rows));
  }
  return true;
}

// Loads stage kt of a tile -- its kRows weight rows' and kPairs x rows' 128
// bytes -- into shared memory at base (weights, then x rows), zero-filled
// past n, the tile's pairs and k. The x rows each thread copies are found once.
template <int kRows, int kPairs, int kThreads, int kElementBytes>
class StageLoader {
 public:
  static constexpr int kWeightBytes = kRows * kGemmRowBytes;

  __device__ StageLoader(const GemmArgs& a, const ExpertTile& tile, int64_t row0)
      : a_(a), row0_(row0), row_bytes_(a.k * kElementBytes) {
    w_expert_ = a.w + static_cast<int64_t>(tile.expert) * a.n * row_bytes_;
    const int pairs = tile.pair_end - tile.pair_begin;
#pragma unroll
    for (int i = 0; i < kXChunks; ++i) {
      const int r = (threadIdx.x + i * kThreads) / 8;
      x_valid_[i] = r < pairs;
      x_src_[i] = a.x + XRow(a, tile.pair_begin + (x_valid_[i] ? r : 0)) * row_bytes_;
    }
  }

  __device__ __forceinline__ void Load(int64_t kt, uint32_t base) const {
    constexpr int kChunkK = 16 / kElementBytes;
    const int64_t k0 = kt * (kGemmRowBytes / kElementBytes);
    for (int c = threadIdx.x; c < kRows * 8; c += kThreads) {
      const int r = c / 8, chunk = c % 8;
      const int64_t kk = k0 + chunk * kChunkK;
      const bool valid = row0_ + r < a_.n && kk < a_.k;
      CpAsync16(base + SwizzledChunk(r, chunk), valid ? w_expert_ + (row0_ + r) * row_bytes_ + kk * kElementBytes : a_.w,
                valid);
    }
#pragma unroll
    for (int i = 0; i < kXChunks; ++i) {
      const int c = threadIdx.x + i * kThreads, r = c / 8, chunk = c % 8;
      const int64_t kk = k0 + chunk * kChunkK;
      const bool valid = x_valid_[i] && kk < a_.k;
      CpAsync16(base + kWeightBytes + SwizzledChunk(r, chunk), valid ? x_src_[i] + kk * kElementBytes : a_.x, valid);
    }
  }

 private:
  static constexpr int kXChunks = kPairs * 8 / kThreads;
  static_assert(kXChunks >= 1 && kPairs * 8 % kThreads == 0, "x chunks spread evenly over the threads");

  const GemmArgs& a_;
  int64_t row0_, row_bytes_;
  const char* w_expert_;
  const char* x_src_[kXChunks];
  bool x_valid_[kXChunks];
};

// Writes accumulator element (weight row r, tile pair `pair`) of blockIdx.z's
// k range: bf16 into y, or float32 into the split's part.
__device__ __forceinline__ void StoreResult(const GemmArgs& a, const ExpertTile& tile, int64_t r, int pair, float v) {
  if (r >= a.n || pair >= tile.pair_end - tile.pair_begin) return;
  const int64_t at = (tile.pair_begin + pair) * a.n + r;
  if (a.partial != nullptr) {
    a.partial[blockIdx.z * a.rows * a.n + at] = v;
  } else {
    a.y[at] = __float2bfloat16(v);
  }
}

// The k stages [begin, end) of blockIdx.z's split.
struct StageRange {
  int64_t begin, end;
};
__device__ __forceinline__ StageRange SplitStages(const GemmArgs& a, int64_t stage_k) {
  const int64_t k_tiles = (a.k + stage_k - 1) / stage_k;
  const int64_t begin = min(static_cast<int64_t>(blockIdx.z) * a.split_stages, k_tiles);
  return {begin, min(begin + a.split_stages, k_tiles)};
}

template <int kPairsArg, int kWarpsMArg, int kWarpsNArg, int kStagesArg>
struct Bf16TileShape {
  static constexpr int kRows = kGemmRows, kPairs = kPairsArg, kWarpsM = kWarpsMArg, kWarpsN = kWarpsNArg;
  static constexpr int kStages = kStagesArg;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kMT = kGemmRows / kWarpsM / 16;
  static constexpr int kNT = kPairs / kWarpsN / 8;
  static constexpr int kWeightBytes = kGemmRows * kGemmRowBytes;
  static constexpr int kStageBytes = kWeightBytes + kPairs * kGemmRowBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;
  static_assert(kNT % 2 == 0, "B fragments load two n8 tiles at a time");
};
// Small for decode (few pairs per weight, the weights streamed by many
// CTAs), Large for prefill (each weight tile serves more pairs; 64 x 64 warp
// tiles reuse each fragment over more MMAs, three stages hide the loads).
// Both sum every output element in the same k order with the same MMA, so
// the shape never changes a result.
using Bf16Small = Bf16TileShape<32, 4, 1, 2>;
using Bf16Large = Bf16TileShape<128, 2, 2, 3>;

template <typename S>
__global__ void __launch_bounds__(S::kThreads) Bf16GemmKernel(const GemmArgs a) {
  ExpertTile tile;
  if (!FindTile<S::kPairs>(a, &tile)) return;
  extern __shared__ __align__(128) char bf16_smem[];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kGemmRows;
  const StageLoader<kGemmRows, S::kPairs, S::kThreads, 2> loader(a, tile, row0);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, lo = lane & 7;
  const int warp_row = (warp % S::kWarpsM) * 16 * S::kMT, warp_pair = (warp / S::kWarpsM) * 8 * S::kNT;

  float acc[S::kMT][S::kNT][4] = {};
  const auto [kt_begin, kt_end] = SplitStages(a, kGemmRowBytes / 2);
  const int64_t count = kt_end - kt_begin;
#pragma unroll
  for (int stage = 0; stage < S::kStages - 1; ++stage) {
    if (stage < count) loader.Load(kt_begin + stage, SmemAddr(bf16_smem + stage * S::kStageBytes));
    CpAsyncCommit();
  }
  for (int64_t i = 0; i < count; ++i) {
    CpAsyncWait<S::kStages - 2>();
    __syncthreads();  // stage i visible; every warp is done with the stage the next load overwrites
    const int64_t ahead = i + S::kStages - 1;
    if (ahead < count) loader.Load(kt_begin + ahead, SmemAddr(bf16_smem + (ahead % S::kStages) * S::kStageBytes));
    CpAsyncCommit();
    const uint32_t w_base = SmemAddr(bf16_smem + (i % S::kStages) * S::kStageBytes);
    const uint32_t x_base = w_base + S::kWeightBytes;
#pragma unroll
    for (int ks = 0; ks < kGemmRowBytes / 32; ++ks) {
      uint32_t af[S::kMT][4];
#pragma unroll
      for (int mt = 0; mt < S::kMT; ++mt) {
        const int r = warp_row + mt * 16 + lo + 8 * ((lane >> 3) & 1);
        LdMatrixX4(w_base + SwizzledChunk(r, 2 * ks + (lane >> 4)), af[mt]);
      }
#pragma unroll
      for (int np = 0; np < S::kNT / 2; ++np) {
        uint32_t b[4];
        const int r = warp_pair + np * 16 + lo + 8 * (lane >> 4);
        LdMatrixX4(x_base + SwizzledChunk(r, 2 * ks + ((lane >> 3) & 1)), b);
#pragma unroll
        for (int mt = 0; mt < S::kMT; ++mt) {
          Mma(acc[mt][2 * np], af[mt], b[0], b[1]);
          Mma(acc[mt][2 * np + 1], af[mt], b[2], b[3]);
        }
      }
    }
  }

  // acc[mt][nt][e]: weight row warp_row + 16mt + lane/4 (+8 for e >= 2), pair warp_pair + 8nt + 2(lane%4) + (e & 1).
#pragma unroll
  for (int mt = 0; mt < S::kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < S::kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        StoreResult(a, tile, row0 + warp_row + mt * 16 + lane / 4 + (e >= 2 ? 8 : 0),
                    warp_pair + nt * 8 + 2 * (lane % 4) + (e & 1), acc[mt][nt][e]);
      }
    }
  }
}

template <int kRowsArg, int kPairsArg, int kStagesArg>
struct Fp8TileShape {
  static constexpr int kRows = kRowsArg, kPairs = kPairsArg, kStages = kStagesArg;
  static constexpr int kThreads = 256;            // two warpgroups
  static constexpr int kBlocks = kRows / 2 / 64;  // m64 blocks of weight rows per warpgroup
  static constexpr int kWeightBytes = kRows * kGemmRowBytes;
  static constexpr int kXBytes = kPairs * kGemmRowBytes;
  // The stage's scales: kRows weight rows' then kPairs x rows', in whole KiB
  // to keep every stage 1024-byte aligned.
  static constexpr int kScaleBytes = ((kRows + kPairs) * 4 + 1023) / 1024 * 1024;
  static constexpr int kStageBytes = kWeightBytes + kXBytes + kScaleBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes + 1024;  // + the alignment of the first stage
  static_assert(kRows <= kThreads && kPairs <= kThreads, "a thread copies a weight row's and a pair's scale");
};
// As for bf16, Small for decode (128 weight rows streamed by many CTAs) and
// Large for prefill (256 weight rows: each x row read from L2 serves twice
// the rows); both run the same wgmma k32 steps and promotions in the same
// order for every element.
using Fp8Small = Fp8TileShape<128, 32, 4>;
using Fp8Large = Fp8TileShape<256, 128, 4>;

template <typename S>
__global__ void __launch_bounds__(S::kThreads, 1) Fp8GemmKernel(const GemmArgs a) {
  ExpertTile tile;
  if (!FindTile<S::kPairs>(a, &tile)) return;
  extern __shared__ __align__(128) char fp8_smem_raw[];
  char* const smem = fp8_smem_raw + ((1024 - (SmemAddr(fp8_smem_raw) & 1023)) & 1023);
  const int64_t n = a.n, k_groups = (a.k + kFp8Group - 1) / kFp8Group;
  const int pairs = tile.pair_end - tile.pair_begin;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * S::kRows;
  const StageLoader<S::kRows, S::kPairs, S::kThreads, 1> loader(a, tile, row0);
  // Thread t copies the scales of weight row t and of pair t: rows past n
  // and pairs past the tile's take a valid one (their values are zero).
  const int t = static_cast<int>(threadIdx.x);
  const float* w_scale_src =
      t < S::kRows
          ? a.w_scale + (static_cast<int64_t>(tile.expert) * n + min(row0 + static_cast<int64_t>(t), n - 1)) * k_groups
          : nullptr;
  const float* x_scale_src =
      t < S::kPairs ? a.x_scale + XRow(a, tile.pair_begin + min(t, pairs - 1)) * k_groups : nullptr;
  auto load = [&](int64_t group, int stage) {
    const uint32_t base = SmemAddr(smem + stage * S::kStageBytes);
    loader.Load(group, base);
    const uint32_t scales = base + S::kWeightBytes + S::kXBytes;
    if (w_scale_src != nullptr) CpAsync4(scales + 4 * t, w_scale_src + group);
    if (x_scale_src != nullptr) CpAsync4(scales + 4 * (S::kRows + t), x_scale_src + group);
  };

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warpgroup = warp / 4;
  // This thread's rows in block b: my_row(b) and my_row(b) + 8.
  auto my_row = [&](int b) { return (warpgroup * S::kBlocks + b) * 64 + 16 * (warp % 4) + lane / 4; };
  float acc[S::kBlocks][S::kPairs / 2] = {};
  float part[S::kPairs / 2];
  const auto [group_begin, group_end] = SplitStages(a, kFp8Group);
  const int64_t count = group_end - group_begin;
#pragma unroll
  for (int stage = 0; stage < S::kStages - 1; ++stage) {
    if (stage < count) load(group_begin + stage, stage);
    CpAsyncCommit();
  }
  for (int64_t i = 0; i < count; ++i) {
    CpAsyncWait<S::kStages - 2>();
    FenceProxyAsync();  // cp.async data (generic proxy) -> wgmma operand reads (async proxy)
    __syncthreads();    // stage i visible; every warpgroup is done with the stage the next load overwrites
    const int64_t ahead = i + S::kStages - 1;
    if (ahead < count) load(group_begin + ahead, static_cast<int>(ahead % S::kStages));
    CpAsyncCommit();
    const char* stage = smem + (i % S::kStages) * S::kStageBytes;
    const float* scales = reinterpret_cast<const float*>(stage + S::kWeightBytes + S::kXBytes);
    const uint32_t x_addr = SmemAddr(stage) + S::kWeightBytes;
#pragma unroll
    for (int b = 0; b < S::kBlocks; ++b) {
      const uint32_t w_addr = SmemAddr(stage) + ((warpgroup * S::kBlocks + b) * 64) * kGemmRowBytes;
      FenceRegs(part);
      WgmmaFence();
#pragma unroll
      for (int ks = 0; ks < kGemmRowBytes / 32; ++ks) {
        WgmmaFp8<S::kPairs>(part, KMajorDesc(w_addr + 32 * ks), KMajorDesc(x_addr + 32 * ks), ks > 0);
      }
      WgmmaCommit();
      WgmmaWaitAll();
      FenceRegs(part);
      const float w_scale[2] = {scales[my_row(b)], scales[my_row(b) + 8]};
#pragma unroll
      for (int j = 0; j < S::kPairs / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float x_scale = scales[S::kRows + 8 * j + 2 * (lane % 4) + e];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float& out = acc[b][4 * j + 2 * h + e];
            out = fmaf(part[4 * j + 2 * h + e], w_scale[h] * x_scale, out);
          }
        }
      }
    }
  }

  // acc[b][4j + 2h + e]: weight row my_row(b) + 8h, pair 8j + 2(lane%4) + e.
#pragma unroll
  for (int b = 0; b < S::kBlocks; ++b) {
#pragma unroll
    for (int j = 0; j < S::kPairs / 8; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          StoreResult(a, tile, row0 + my_row(b) + 8 * h, 8 * j + 2 * (lane % 4) + e, acc[b][4 * j + 2 * h + e]);
        }
      }
    }
  }
}

template <typename S, typename Kernel>
cudaError_t Launch(Kernel kernel, const GemmArgs& args, int64_t tile_rows, int64_t splits, cudaStream_t stream) {
  static const cudaError_t attribute =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes);
  if (attribute != cudaSuccess) return attribute;
  const dim3 grid(static_cast<unsigned>((args.n + S::kRows - 1) / S::kRows), static_cast<unsigned>(tile_rows),
                  static_cast<unsigned>(splits));
  kernel<<<grid, S::kThreads, S::kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

static_assert(Bf16Small::kPairs == Fp8Small::kPairs && Bf16Large::kPairs == Fp8Large::kPairs,
              "the grouping makes tiles of the same pair counts for both formats");
constexpr int kSmallTilePairs = Bf16Small::kPairs, kLargeTilePairs = Bf16Large::kPairs;

// Launch in the tile shape of the format that `tile_pairs` names.
template <bool kFp8>
cudaError_t LaunchTiles(const GemmArgs& args, int64_t tile_pairs, int64_t tile_rows, int64_t splits,
                        cudaStream_t stream) {
  const bool small = tile_pairs == kSmallTilePairs;
  if (!small && tile_pairs != kLargeTilePairs) return cudaErrorInvalidValue;
  if constexpr (kFp8) {
    return small ? Launch<Fp8Small>(Fp8GemmKernel<Fp8Small>, args, tile_rows, splits, stream)
                 : Launch<Fp8Large>(Fp8GemmKernel<Fp8Large>, args, tile_rows, splits, stream);
  } else {
    return small ? Launch<Bf16Small>(Bf16GemmKernel<Bf16Small>, args, tile_rows, splits, stream)
                 : Launch<Bf16Large>(Bf16GemmKernel<Bf16Large>, args, tile_rows, splits, stream);
  }
}

// The GEMM over expert tiles (k unsplit), either format: rows of k values
// must be whole 16-byte chunks.
template <bool kFp8>
cudaError_t LaunchExpertTiles(GemmArgs args, int64_t tile_pairs, int64_t max_tiles, cudaStream_t stream) {
  if (max_tiles == 0 || args.n == 0) return cudaSuccess;
  if (args.k % (kFp8 ? 16 : 8) != 0 || max_tiles > 65535) return cudaErrorInvalidValue;
  args.split_stages = INT64_MAX / 2;
  return LaunchTiles<kFp8>(args, tile_pairs, max_tiles, 1, stream);
}

// One warp per (row, 128-column group), 4 values per lane.
__global__ void QuantizeFp8Kernel(const __nv_bfloat16* x, int64_t rows, int64_t k, uint8_t* q, float* scale) {
  const int64_t k_groups = (k + kFp8Group - 1) / kFp8Group;
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (unit >= rows * k_groups) return;
  const int64_t row = unit / k_groups, col = unit % k_groups * kFp8Group + (threadIdx.x % 32) * 4;
  const bool mine = col < k;  // k is a multiple of 16: a lane's 4 values are all in or all out
  float v[4] = {};
  float amax = 0.0f;
  if (mine) {
    const uint2 bits = *reinterpret_cast<const uint2*>(x + row * k + col);
    const float2 lo = UnpackBf16(bits.x), hi = UnpackBf16(bits.y);
    v[0] = lo.x, v[1] = lo.y, v[2] = hi.x, v[3] = hi.y;
    amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
  }
  for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, offset));
  const float s = fmaxf(amax, 1e-4f) / kFp8Max;
  if (mine) {
    uint32_t packed = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      packed |= static_cast<uint32_t>(__nv_cvt_float_to_fp8(v[i] / s, __NV_SATFINITE, __NV_E4M3)) << (8 * i);
    }
    *reinterpret_cast<uint32_t*>(q + row * k + col) = packed;
  }
  if (threadIdx.x % 32 == 0) scale[row * k_groups + unit % k_groups] = s;
}

// y[i] = sum over s of parts[s][i], in s order.
__global__ void SumSplitsKernel(const float* parts, int64_t splits, int64_t count, __nv_bfloat16* y) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t s = 0; s < splits; ++s) sum += parts[s * count + i];
    y[i] = __float2bfloat16(sum);
  }
}

// Rows per launch of a split dense GEMM, bounding its workspace.
constexpr int64_t kDenseChunkRows = 1024;
// CTAs a dense weight's split aims for, and the fewest groups a split covers.
constexpr int64_t kDenseTargetCtas = 128;
constexpr int64_t kMinSplitGroups = 4;

}  // namespace

int64_t ExpertTilePairs(int64_t max_pairs, int64_t local_experts) {
  return max_pairs >= kLargeTileMinPairsPerExpert * local_experts ? kLargeTilePairs : kSmallTilePairs;
}

int64_t MaxExpertTiles(int64_t max_pairs, int64_t local_experts, int64_t tile_pairs) {
  return (max_pairs + tile_pairs - 1) / tile_pairs + std::min(max_pairs, local_experts);
}

cudaError_t GroupedExpertGemm(const __nv_bfloat16* w, int64_t n, int64_t k, const __nv_bfloat16* x,
                              const int32_t* x_rows, int64_t tile_pairs, const ExpertTile* tiles,
                              const int32_t* num_tiles, int64_t max_tiles, __nv_bfloat16* y, cudaStream_t stream) {
  const GemmArgs args{.w = reinterpret_cast<const char*>(w), .n = n, .k = k, .x = reinterpret_cast<const char*>(x),
                      .x_rows = x_rows, .tiles = tiles, .num_tiles = num_tiles, .y = y};
  return LaunchExpertTiles<false>(args, tile_pairs, max_tiles, stream);
}

cudaError_t QuantizeFp8Rows(const __nv_bfloat16* x, int64_t rows, int64_t k, uint8_t* q, float* scale,
                            cudaStream_t stream) {
  if (rows == 0 || k == 0) return cudaSuccess;
  if (k % 16 != 0) return cudaErrorInvalidValue;
  const int64_t units = rows * ((k + kFp8Group - 1) / kFp8Group), warps_per_block = 8;
  QuantizeFp8Kernel<<<static_cast<unsigned>((units + warps_per_block - 1) / warps_per_block), 32 * warps_per_block, 0,
                      stream>>>(x, rows, k, q, scale);
  return cudaGetLastError();
}

cudaError_t GroupedExpertGemmFp8(Fp8Operand w, int64_t n, int64_t k, Fp8Operand x, const int32_t* x_rows,
                                 int64_t tile_pairs, const ExpertTile* tiles, const int32_t* num_tiles,
                                 int64_t max_tiles, __nv_bfloat16* y, cudaStream_t stream) {
  const GemmArgs args{.w = reinterpret_cast<const char*>(w.values), .w_scale = w.scale, .n = n, .k = k,
                      .x = reinterpret_cast<const char*>(x.values), .x_scale = x.scale, .x_rows = x_rows,
                      .tiles = tiles, .num_tiles = num_tiles, .y = y};
  return LaunchExpertTiles<true>(args, tile_pairs, max_tiles, stream);
}

int64_t DenseFp8Splits(int64_t n, int64_t k) {
  const int64_t row_blocks = (n + kGemmRows - 1) / kGemmRows, groups = (k + kFp8Group - 1) / kFp8Group;
  const int64_t wanted = std::max<int64_t>(1, kDenseTargetCtas / std::max<int64_t>(row_blocks, 1));
  return std::max<int64_t>(1, std::min(wanted, groups / kMinSplitGroups));
}

int64_t DenseFp8WorkspaceFloats(int64_t rows, int64_t n, int64_t k) {
  const int64_t splits = DenseFp8Splits(n, k);
  return splits == 1 ? 0 : splits * std::min(rows, kDenseChunkRows) * n;
}

cudaError_t DenseGemmFp8(Fp8Operand w, int64_t n, int64_t k, Fp8Operand x, int64_t rows, float* workspace,
                         __nv_bfloat16* y, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  if (k % 16 != 0) return cudaErrorInvalidValue;
  const int64_t splits = DenseFp8Splits(n, k), groups = (k + kFp8Group - 1) / kFp8Group;
  const int64_t split_stages = (groups + splits - 1) / splits;
  const int64_t chunk_rows = splits == 1 ? rows : kDenseChunkRows;
  for (int64_t begin = 0; begin < rows; begin += chunk_rows) {
    const int64_t count = std::min(chunk_rows, rows - begin);
    const int64_t tile_pairs = ExpertTilePairs(count, 1);
    const int64_t tile_rows = (count + tile_pairs - 1) / tile_pairs;
    if (tile_rows > 65535) return cudaErrorInvalidValue;
    GemmArgs args{.w = reinterpret_cast<const char*>(w.values), .w_scale = w.scale, .n = n, .k = k,
                  .x = reinterpret_cast<const char*>(x.values + begin * k), .x_scale = x.scale + begin * groups,
                  .rows = count, .split_stages = split_stages, .y = y + begin * n,
                  .partial = splits == 1 ? nullptr : workspace};
    const cudaError_t err = LaunchTiles<true>(args, tile_pairs, tile_rows, splits, stream);
    if (err != cudaSuccess) return err;
    if (splits > 1) {
      const int64_t elements = count * n;
      const int64_t blocks = std::min<int64_t>((elements + 255) / 256, 4096);
      SumSplitsKernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(workspace, splits, elements, y + begin * n);
      const cudaError_t sum_err = cudaGetLastError();
      if (sum_err != cudaSuccess) return sum_err;
    }
  }
  return cudaSuccess;
}

}  // namespace mlaserve::cuda
