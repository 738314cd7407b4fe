// The tensor-core GEMM of the CUDA backend's own kernels: y = x w^T over
// runs of rows ("tiles"), each against its own weight matrix -- the routed
// experts of an MoE layer (tiles from MoeGroupPairs, moe.h) or one dense
// weight (tiles made from the row count). Two operand formats:
//   - bf16 x and w, float32 accumulation;
//   - FP8 (e4m3) x and w as DeepSeek-V3 scales them: w with one float scale
//     per row and 128-column group (checkpoint block scales expanded per
//     row, so any row selection of a weight keeps its scales), x quantized on
//     the fly per row and 128-column group (QuantizeFp8Rows). Each 128-column
//     group's products are summed by the MMA in float32, then added to the
//     result times x's and w's scales of that group ("promotion", as
//     DeepGEMM does: Hopper's FP8 MMA accumulates with fewer bits, so no
//     longer run than one group goes through it).
//
// Batch invariance: an output element is one fixed chain of MMAs over k in
// the same order whatever the tile shape, the number of rows, or where its
// row sits; a dense weight's k split (DenseFp8Splits) depends only on its
// shape. So a row's result never depends on the other rows of its batch.
#ifndef MLASERVE_KERNELS_CUDA_GROUPED_GEMM_H_
#define MLASERVE_KERNELS_CUDA_GROUPED_GEMM_H_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mlaserve::cuda {

// Columns per scale of the FP8 format (the activation and weight group).
constexpr int64_t kFp8Group = 128;
// The largest e4m3 magnitude: a group's absolute maximum maps to it.
constexpr float kFp8Max = 448.0f;

// A run of at most `tile_pairs` consecutive rows ("pairs") [pair_begin,
// pair_end) multiplied by one weight matrix: the unit of work of the GEMM.
struct ExpertTile {
  int32_t expert = 0;
  int32_t pair_begin = 0;
  int32_t pair_end = 0;
  int32_t unused = 0;
};

// Pairs per tile for up to `max_pairs` pairs over `local_experts` weights:
// 32 when each sees few rows (decode: the GEMMs stream weights), 128 when
// they see many (prefill: each weight tile serves more rows).
constexpr int64_t kLargeTileMinPairsPerExpert = 64;
int64_t ExpertTilePairs(int64_t max_pairs, int64_t local_experts);
// The most tiles `max_pairs` pairs over `local_experts` weights can need.
int64_t MaxExpertTiles(int64_t max_pairs, int64_t local_experts, int64_t tile_pairs);

// For every pair p of tiles[0, *num_tiles): y[p, :] = x[row(p), :] w[e]^T,
// e the tile's expert, w [experts, n, k], x rows of k values, row(p) =
// x_rows[p] (a gather) or p when x_rows is null; y [pairs, n]. bf16 in and
// out, float32 accumulation; tile_pairs is 32 or 128 (as grouped). k must be
// a multiple of 8 and the arrays 16-byte aligned. Launches max_tiles tile
// rows; those past *num_tiles exit.
cudaError_t GroupedExpertGemm(const __nv_bfloat16* w, int64_t n, int64_t k, const __nv_bfloat16* x,
                              const int32_t* x_rows, int64_t tile_pairs, const ExpertTile* tiles,
                              const int32_t* num_tiles, int64_t max_tiles, __nv_bfloat16* y, cudaStream_t stream);

// q[r, :] and scale[r, g] of x [rows, k]: per row r and 128-column group g,
// scale = max(amax, 1e-4) / 448 with amax the group's largest |x|, and
// q = e4m3(x / scale) rounded to nearest even (kernels/cpu's
// QuantizeFp8Row is the same rule). scale is [rows, ceil(k / 128)]; k a
// multiple of 16.
cudaError_t QuantizeFp8Rows(const __nv_bfloat16* x, int64_t rows, int64_t k, uint8_t* q, float* scale,
                            cudaStream_t stream);

// The FP8 GemmOperands: e4m3 values [.., k] and their float scales
// [.., ceil(k / 128)] per row.
struct Fp8Operand {
  const uint8_t* values = nullptr;
  const float* scale = nullptr;
};

// GroupedExpertGemm for FP8 operands: w [experts, n, k] with scales
// [experts, n, ceil(k / 128)], x rows of k values with scales of
// ceil(k / 128); bf16 out. k must be a multiple of 16.
cudaError_t GroupedExpertGemmFp8(Fp8Operand w, int64_t n, int64_t k, Fp8Operand x, const int32_t* x_rows,
                                 int64_t tile_pairs, const ExpertTile* tiles, const int32_t* num_tiles,
                                 int64_t max_tiles, __nv_bfloat16* y, cudaStream_t stream);

// How many parts the k range of a dense [n, k] FP8 weight is split into, so
// that a weight of few rows still spreads over the GPU at decode: fixed per
// shape (never per row count), each part at least 4 groups long.
int64_t DenseFp8Splits(int64_t n, int64_t k);
// Float32 workspace DenseGemmFp8 needs for `rows` rows of an [n, k] weight.
int64_t DenseFp8WorkspaceFloats(int64_t rows, int64_t n, int64_t k);

// y[rows, n] = x[rows, k] w[n, k]^T for one FP8 weight (bf16 out): the
// grouped GEMM over tiles of consecutive rows, k split DenseFp8Splits ways
// with the parts summed in order through `workspace`
// (DenseFp8WorkspaceFloats floats; unused when not split).
cudaError_t DenseGemmFp8(Fp8Operand w, int64_t n, int64_t k, Fp8Operand x, int64_t rows, float* workspace,
                         __nv_bfloat16* y, cudaStream_t stream);

}  // namespace mlaserve::cuda

#endif  // MLASERVE_KERNELS_CUDA_GROUPED_GEMM_H_
