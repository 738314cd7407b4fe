// Every tile of the MLA kernels, named once: the cache row, the 16-row
// mma.sync tile and the 64-row wgmma tile of the absorbed (decode) form, the
// expanded (prefill) form's tile, and the CTA sizes of the CUDA-core kernels
// (generic dims, split combine). Internal to kernels/cuda/mla.
#ifndef MLASERVE_KERNELS_CUDA_MLA_TRAITS_H_
#define MLASERVE_KERNELS_CUDA_MLA_TRAITS_H_

#include "kernels/cuda/mla/kernels.h"

namespace mlaserve::cuda::mla {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr int kD = kMlaRank + kMlaRope;  // 576: c_kv ++ k_rope, one cache row
inline constexpr int kRowBytes = kD * 2;        // 1152
inline constexpr int kRankChunks = kMlaRank / 8;
inline constexpr int kRowChunks = kD / 8;  // 72 chunks of 16 bytes
inline constexpr int kThreads = 256;       // 8 warps per CTA on the tensor-core path
static_assert(kRowChunks % 8 == 0, "the XOR swizzle permutes chunks within groups of 8");
// An FP8 tile (kernels.h's kMlaFp8* row) staged through registers: each thread's chunks.
inline constexpr int kFp8ChunksPerThread = kMlaTileKeys * (kMlaRank / 16) / kThreads;  // 8 of 16 values
inline constexpr int kFp8RopeChunksPerThread = kMlaTileKeys * (kMlaRope / 8) / kThreads;  // 2 of 8 bf16
static_assert(kMlaTileKeys == 64, "the warp layouts below assume 64 keys per tile");

// Absorbed form on mma.sync. A CTA of 8 warps holds kRows = 16 * kMT * kWM query rows.
// Warps form a kWM x kWN grid (kWN = 8 / kWM): warp (wm, wn) owns rows
// [wm * 16 * kMT, +16 * kMT). For each tile of 64 keys it computes the scores of its rows
// against keys slice wn (64 / kWN keys), the warps of a row group exchange their row
// maxima and probabilities through shared memory, and it accumulates output columns
// slice wn (512 / kWN columns) over all 64 keys.
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
// The 16-row tile (up to 16 heads, the memory-bound case): 1 x 8 warps, 8 keys and
// 64 output columns each.
using Rows16Tile = TileShape</*kMT=*/1, /*kWM=*/1>;

// Absorbed form on wgmma, 64 rows: Q and the cache tiles in slabs of 64 rows x 64 bf16
// (8 KiB, the 128-byte swizzle); three tiles (Q and two cache stages), the P slab and
// the row maxima and sums of two warpgroups.
inline constexpr int kSlabBytes = 64 * 128;
inline constexpr int kSlabs = kD / 64;  // 9
inline constexpr int kWgTileBytes = kSlabs * kSlabBytes;
inline constexpr int kWgSmemBytes = 1024 /* alignment */ + 3 * kWgTileBytes + kSlabBytes + 4 * 64 * 4;

// Generic absorbed and expanded kernels (any dims; CUDA cores).
inline constexpr int kGenericThreads = 128;
inline constexpr int kExpGenericChunk = 128;
inline constexpr int kExpGenericMaxDvPerThread = 4;

// Split combine: a warp per row, or for rank 512 four groups of 128 threads per row.
inline constexpr int kCombineThreads = 256;
inline constexpr int kCombine512Threads = 512;
inline constexpr int kCombineGroups = kCombine512Threads / 128;

// Expanded form on mma.sync (other dims with 16-multiples, as the tiny test model's):
// 4 warps, 64 queries of one head, keys in tiles of 64,
// rows padded by 16 bytes in shared memory.
inline constexpr int kExpThreads = 128;
inline constexpr int kExpRows = 64;
inline constexpr int kExpKeys = 64;

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

// Expanded form at DeepSeek's dims (qk 192 = nope 128 + rope 64, v 128) on wgmma:
// two warpgroups of 64 queries of one head; per tile of 64 keys, K (three slabs:
// k_nope's two, k_rope) and V (two slabs) in the 128-byte swizzle, two stages.
inline constexpr int kExpWgThreads = 256;
inline constexpr int kExpWgRows = 128;
inline constexpr int kExpWgKeys = 64;
inline constexpr int kExpWgQkSlabs = 3;
inline constexpr int kExpWgVSlabs = 2;
inline constexpr int kExpWgQBytes = 2 * kExpWgQkSlabs * kSlabBytes;
inline constexpr int kExpWgStageBytes = (kExpWgQkSlabs + kExpWgVSlabs) * kSlabBytes;
inline constexpr int kExpWgSmemBytes = 1024 /* alignment */ + kExpWgQBytes + 2 * kExpWgStageBytes;

}  // namespace mlaserve::cuda::mla

#endif  // MLASERVE_KERNELS_CUDA_MLA_TRAITS_H_
