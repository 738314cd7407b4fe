#include "kernels/cuda/grouped_gemm.h"

#include <cuda_fp8.h>

#include <algorithm>

#include "kernels/cuda/ptx.h"

namespace mlaserve::cuda {
namespace {

// A CTA computes one tile's pairs against 128 rows of its weight, k in
// stages of 128 bytes per row (64 bf16 or 128 e4m3 values) through a
// kStages-deep cp.async pipeline. Its warps form a kWarpsM x kWarpsN grid
// over (weight rows, pairs); each warp owns 16 * kMT weight rows (the MMA's
// A) by 8 * kNT pairs (n8 tiles of its B). Shared rows are 8 chunks of 16
// bytes, XOR-swizzled by row so that ldmatrix over 8 rows hits 8 bank
// groups. Both formats load the same bytes the same way; only the MMA and
// the FP8 promotion differ.

constexpr int kGemmRows = 128;      // weight rows per CTA
constexpr int kGemmRowBytes = 128;  // bytes of a row per stage

template <int kPairsArg, int kWarpsMArg, int kWarpsNArg, int kStagesArg>
struct TileShape {
  static constexpr int kPairs = kPairsArg, kWarpsM = kWarpsMArg, kWarpsN = kWarpsNArg, kStages = kStagesArg;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kMT = kGemmRows / kWarpsM / 16;
  static constexpr int kNT = kPairs / kWarpsN / 8;
  static constexpr int kXChunks = kPairs * 8 / kThreads;  // x chunks each thread loads per stage
  static constexpr int kWeightBytes = kGemmRows * kGemmRowBytes;
  static constexpr int kStageBytes = kWeightBytes + kPairs * kGemmRowBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;
  static_assert(kNT % 2 == 0, "B fragments load two n8 tiles at a time");
  static_assert(kXChunks >= 1 && kPairs * 8 % kThreads == 0, "");
};

// An operand format and its two tile shapes: Small for decode (few pairs per
// weight, the weights streamed by many CTAs), Large for prefill (each weight
// tile serves more pairs). Both shapes of a format sum every output element
// in the same k order with the same MMA, so the shape never changes a result.
struct Bf16Format {
  static constexpr bool kFp8 = false;
  static constexpr int kElementBytes = 2;
  using Small = TileShape<32, 4, 1, 2>;
  // 64 x 64 warp tiles reuse each fragment over more MMAs, three stages hide the loads.
  using Large = TileShape<128, 2, 2, 3>;
};
struct Fp8Format {
  static constexpr bool kFp8 = true;
  static constexpr int kElementBytes = 1;
  using Small = TileShape<32, 4, 1, 3>;
  // A group's partial sums sit beside the accumulators: 32 x 32 warp tiles keep both in registers.
  using Large = TileShape<128, 4, 4, 3>;
};
static_assert(Bf16Format::Small::kPairs == Fp8Format::Small::kPairs &&
                  Bf16Format::Large::kPairs == Fp8Format::Large::kPairs,
              "the grouping makes tiles of the same pair counts for both formats");
constexpr int kSmallTilePairs = Bf16Format::Small::kPairs, kLargeTilePairs = Bf16Format::Large::kPairs;

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

template <typename S, typename F>
__global__ void __launch_bounds__(S::kThreads) GroupedGemmKernel(const GemmArgs a) {
  ExpertTile tile;
  if (a.tiles != nullptr) {
    if (static_cast<int>(blockIdx.y) >= *a.num_tiles) return;
    tile = a.tiles[blockIdx.y];
  } else {
    tile.pair_begin = static_cast<int32_t>(blockIdx.y) * S::kPairs;
    tile.pair_end = static_cast<int32_t>(min(static_cast<int64_t>(tile.pair_begin) + S::kPairs, a.rows));
  }
  extern __shared__ __align__(128) char gemm_smem[];
  constexpr int kStageK = kGemmRowBytes / F::kElementBytes, kChunkK = 16 / F::kElementBytes;
  const int64_t n = a.n, k = a.k, row_bytes = k * F::kElementBytes;
  const int pairs = tile.pair_end - tile.pair_begin;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kGemmRows;
  const char* w_expert = a.w + static_cast<int64_t>(tile.expert) * n * row_bytes;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, lo = lane & 7;
  const int warp_row = (warp % S::kWarpsM) * 16 * S::kMT, warp_pair = (warp / S::kWarpsM) * 8 * S::kNT;
  auto x_row = [&](int pair) { return a.x_rows != nullptr ? static_cast<int64_t>(a.x_rows[pair]) : pair; };

  // The pair rows of x this thread loads (chunks tid + i * threads), found once.
  const char* x_src[S::kXChunks];
  bool x_valid[S::kXChunks];
#pragma unroll
  for (int i = 0; i < S::kXChunks; ++i) {
    const int r = (threadIdx.x + i * S::kThreads) / 8;
    x_valid[i] = r < pairs;
    x_src[i] = a.x + x_row(tile.pair_begin + (x_valid[i] ? r : 0)) * row_bytes;
  }
  auto load = [&](int64_t kt, int stage) {
    const uint32_t base = SmemAddr(gemm_smem + stage * S::kStageBytes);
    const int64_t k0 = kt * kStageK;
    for (int c = threadIdx.x; c < kGemmRows * 8; c += S::kThreads) {
      const int r = c / 8, chunk = c % 8;
      const int64_t kk = k0 + chunk * kChunkK;
      const bool valid = row0 + r < n && kk < k;
      CpAsync16(base + SwizzledChunk(r, chunk), valid ? w_expert + (row0 + r) * row_bytes + kk * F::kElementBytes : a.w,
                valid);
    }
#pragma unroll
    for (int i = 0; i < S::kXChunks; ++i) {
      const int c = threadIdx.x + i * S::kThreads, r = c / 8, chunk = c % 8;
      const int64_t kk = k0 + chunk * kChunkK;
      const bool valid = x_valid[i] && kk < k;
      CpAsync16(base + S::kWeightBytes + SwizzledChunk(r, chunk), valid ? x_src[i] + kk * F::kElementBytes : a.x,
                valid);
    }
  };

  // FP8: where this thread's accumulator rows find their scales; the x row
  // of every pair of the tile in shared memory (pointers per pair would
  // cost the accumulators their registers).
  const int64_t k_groups = (k + kFp8Group - 1) / kFp8Group;
  const float* w_scale_row[S::kMT][2];
  __shared__ int64_t pair_x_row[F::kFp8 ? S::kPairs : 1];
  if constexpr (F::kFp8) {
#pragma unroll
    for (int mt = 0; mt < S::kMT; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t r = min(row0 + warp_row + mt * 16 + lane / 4 + 8 * h, n - 1);
        w_scale_row[mt][h] = a.w_scale + (static_cast<int64_t>(tile.expert) * n + r) * k_groups;
      }
    }
    for (int pair = threadIdx.x; pair < S::kPairs; pair += S::kThreads) {
      pair_x_row[pair] = x_row(tile.pair_begin + min(pair, pairs - 1));
    }
  }

  float acc[S::kMT][S::kNT][4] = {};
  const int64_t k_tiles = (k + kStageK - 1) / kStageK;
  const int64_t kt_begin = min(static_cast<int64_t>(blockIdx.z) * a.split_stages, k_tiles);
  const int64_t kt_end = min(kt_begin + a.split_stages, k_tiles), count = kt_end - kt_begin;
#pragma unroll
  for (int stage = 0; stage < S::kStages - 1; ++stage) {
    if (stage < count) load(kt_begin + stage, stage);
    CpAsyncCommit();
  }
  for (int64_t i = 0; i < count; ++i) {
    CpAsyncWait<S::kStages - 2>();
    __syncthreads();  // stage i visible; every warp is done with the stage the next load overwrites
    if (i + S::kStages - 1 < count) load(kt_begin + i + S::kStages - 1, (i + S::kStages - 1) % S::kStages);
    CpAsyncCommit();
    const uint32_t w_base = SmemAddr(gemm_smem + (i % S::kStages) * S::kStageBytes);
    const uint32_t x_base = w_base + S::kWeightBytes;
    // FP8: a stage is one 128-column group: its products sum apart, then promote.
    float group_sw[S::kMT][2], group_sx[S::kNT][2];
    float part[F::kFp8 ? S::kMT : 1][F::kFp8 ? S::kNT : 1][4] = {};
    if constexpr (F::kFp8) {
      const int64_t g = kt_begin + i;
#pragma unroll
      for (int mt = 0; mt < S::kMT; ++mt) group_sw[mt][0] = w_scale_row[mt][0][g], group_sw[mt][1] = w_scale_row[mt][1][g];
#pragma unroll
      for (int nt = 0; nt < S::kNT; ++nt) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          group_sx[nt][j] = a.x_scale[pair_x_row[warp_pair + nt * 8 + 2 * (lane % 4) + j] * k_groups + g];
        }
      }
    }
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
          if constexpr (F::kFp8) {
            MmaFp8(part[mt][2 * np], af[mt], b[0], b[1]);
            MmaFp8(part[mt][2 * np + 1], af[mt], b[2], b[3]);
          } else {
            Mma(acc[mt][2 * np], af[mt], b[0], b[1]);
            Mma(acc[mt][2 * np + 1], af[mt], b[2], b[3]);
          }
        }
      }
    }
    if constexpr (F::kFp8) {
#pragma unroll
      for (int mt = 0; mt < S::kMT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < S::kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            acc[mt][nt][e] = fmaf(part[mt][nt][e], group_sw[mt][e >> 1] * group_sx[nt][e & 1], acc[mt][nt][e]);
          }
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
        const int64_t r = row0 + warp_row + mt * 16 + lane / 4 + (e >= 2 ? 8 : 0);
        const int pair = warp_pair + nt * 8 + 2 * (lane % 4) + (e & 1);
        if (r >= n || pair >= pairs) continue;
        const int64_t at = (tile.pair_begin + pair) * n + r;
        if (a.partial != nullptr) {
          a.partial[blockIdx.z * a.rows * n + at] = acc[mt][nt][e];
        } else {
          a.y[at] = __float2bfloat16(acc[mt][nt][e]);
        }
      }
    }
  }
}

template <typename S, typename F>
cudaError_t Launch(const GemmArgs& args, int64_t tile_rows, int64_t splits, cudaStream_t stream) {
  static const cudaError_t attribute =
      cudaFuncSetAttribute(GroupedGemmKernel<S, F>, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes);
  if (attribute != cudaSuccess) return attribute;
  const dim3 grid(static_cast<unsigned>((args.n + kGemmRows - 1) / kGemmRows), static_cast<unsigned>(tile_rows),
                  static_cast<unsigned>(splits));
  GroupedGemmKernel<S, F><<<grid, S::kThreads, S::kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

// Launch in the tile shape of F that `tile_pairs` names.
template <typename F>
cudaError_t LaunchTiles(const GemmArgs& args, int64_t tile_pairs, int64_t tile_rows, int64_t splits,
                        cudaStream_t stream) {
  if (tile_pairs == kSmallTilePairs) return Launch<typename F::Small, F>(args, tile_rows, splits, stream);
  if (tile_pairs == kLargeTilePairs) return Launch<typename F::Large, F>(args, tile_rows, splits, stream);
  return cudaErrorInvalidValue;
}

// The GEMM over expert tiles (k unsplit), either format: rows of k values
// must be whole 16-byte chunks.
template <typename F>
cudaError_t LaunchExpertTiles(GemmArgs args, int64_t tile_pairs, int64_t max_tiles, cudaStream_t stream) {
  if (max_tiles == 0 || args.n == 0) return cudaSuccess;
  if (args.k % (16 / F::kElementBytes) != 0 || max_tiles > 65535) return cudaErrorInvalidValue;
  args.split_stages = INT64_MAX / 2;
  return LaunchTiles<F>(args, tile_pairs, max_tiles, 1, stream);
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
  return LaunchExpertTiles<Bf16Format>(args, tile_pairs, max_tiles, stream);
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
  return LaunchExpertTiles<Fp8Format>(args, tile_pairs, max_tiles, stream);
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
    const cudaError_t err = LaunchTiles<Fp8Format>(args, tile_pairs, tile_rows, splits, stream);
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
