// MLA attention kernels on raw device pointers (bf16 storage, float32
// accumulation, online softmax). kernels/cuda/mla_attention.cc checks shapes,
// plans the work on the host and launches these.
//
// Absorbed form (the decode hot path): the rows of a sequence are its
// (query token, head) pairs, row = token * heads + head, and a tile is up to
// 16 or 64 consecutive rows of one sequence (or one row on the generic path).
// A work item is one tile against one split of the keys, a fixed-size range of
// cache positions (the split size never depends on the batch). A tile whose
// keys fit one split writes its rows to `out` directly; otherwise each split
// writes normalized float32 partial rows and their log2-sum-exp, and
// MlaCombine merges the splits of a tile in split order. A row's result
// therefore depends only on its own sequence: bitwise the same whatever else
// is in the batch (and whichever CTA runs the item).
//
// The tensor-core path (kv_lora_rank 512, rope 64, as DeepSeek-V2/V3): the
// query tile stays in shared memory, the cache rows of 64 keys are gathered
// through the block table with cp.async (double-buffered) into shared memory
// and read from there by all rows of the tile. 16-row tiles (up to 16 heads,
// the memory-bound case) run on mma.sync m16n8k16 with ldmatrix; 64-row tiles
// on wgmma (two warpgroups splitting the keys of Q K^T and the columns of
// P V, which runs on while the next tile's Q K^T is issued). The grid is
// persistent (one CTA per SM looping over work items). Other dims take a simple
// generic kernel. One file per kernel under kernels/cuda/mla/; traits.h names
// their tiles; retired variants are numbers in docs/perf.md.
#ifndef MLASERVE_KERNELS_CUDA_MLA_KERNELS_H_
#define MLASERVE_KERNELS_CUDA_MLA_KERNELS_H_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mlaserve::cuda {

// Dims of the tensor-core absorbed path.
inline constexpr int kMlaRank = 512;
inline constexpr int kMlaRope = 64;
// An FP8 cache row at those dims (kernels/latent_row.h): 512 e4m3 values of
// c_kv, their 4 float32 scales, 64 bf16 of k_rope.
inline constexpr int kMlaFp8RowBytes = 656;
inline constexpr int kMlaFp8ScalesAt = kMlaRank;
inline constexpr int kMlaFp8RopeAt = kMlaRank + 16;
// Keys of cache per shared-memory tile (one mma pass).
inline constexpr int kMlaTileKeys = 64;
// The most keys a work item of the generic absorbed kernel may cover.
inline constexpr int kMlaGenericMaxKeys = 1024;
// Limits of the generic kernels: rank + rope (or nope + rope) and v_head_dim.
inline constexpr int kMlaGenericMaxDims = 16384;
inline constexpr int kMlaExpandedMaxDv = 512;

// Which absorbed kernel runs a work item (rows per CTA).
enum class MlaTileKind : int { kRows16 = 0, kRows64 = 1, kGeneric = 2 };
inline constexpr int kMlaNumTileKinds = 3;
inline constexpr int MlaTileRows(MlaTileKind kind) {
  return kind == MlaTileKind::kRows16 ? 16 : kind == MlaTileKind::kRows64 ? 64 : 1;
}

// One CTA of the absorbed split-KV kernel.
struct MlaWorkItem {
  int32_t q_row;      // first row of the tile in q and out (row = token * heads + head)
  int32_t num_rows;   // rows of the tile (the rest of the CTA's rows are padding)
  int32_t seq_row;    // the tile's first row within its sequence
  int32_t prefix;     // context_len - num_tokens: row r of the sequence sees keys [0, prefix + r / heads]
  int32_t key_begin;  // this split's keys are [key_begin, key_end)
  int32_t key_end;
  int32_t table;    // offset of the sequence's block table in the block-table array
  int32_t partial;  // -1: write out; else partial row of the tile's row 0 in this split
};

// One tile whose splits MlaCombine merges: split s of row r is partial row
// partial + s * num_rows + r.
struct MlaCombineItem {
  int32_t q_row;
  int32_t num_rows;
  int32_t partial;
  int32_t num_splits;
};

struct MlaAbsorbedParams {
  const __nv_bfloat16* q_latent;  // [rows, rank]
  const __nv_bfloat16* q_rope;    // [rows, rope]
  const __nv_bfloat16* cache;     // [num_blocks, layers, block_size, rank + rope]
  const int32_t* block_tables;    // concatenated block tables
  __nv_bfloat16* out;             // [rows, rank]
  float* partial_out;             // [partial rows, rank], normalized
  float* partial_lse;             // [partial rows], log2 of the row's sum of exp2(score * scale * log2(e))
  int64_t layers;
  int64_t layer;
  int block_size;
  int heads;
  int rank;
  int rope;
  float softmax_scale;
  // Set for an FP8 cache (kernels/latent_row.h), which `cache` then is not:
  // rows of fp8_row_bytes, c_kv's e4m3 values first, their float32 scales
  // (one per 128 values) at byte fp8_scales_at, k_rope (bf16) at fp8_rope_at.
  const uint8_t* fp8_cache;
  int fp8_row_bytes;
  int fp8_scales_at;
  int fp8_rope_at;
};

// Runs `num_items` work items of one kind (one CTA each). An FP8 cache's rows
// are dequantized as they are read (bf16(e4m3 * scale)), so the kernels'
// math is the bf16 cache's.
cudaError_t MlaAbsorbed(MlaTileKind kind, const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params,
                        cudaStream_t stream);

// Merges the splits of `num_items` tiles (of at most `max_rows` rows) into out (bf16).
cudaError_t MlaCombine(const MlaCombineItem* items, int num_items, int max_rows, const float* partial_out,
                       const float* partial_lse, int rank, __nv_bfloat16* out, cudaStream_t stream);

// Expanded form for one sequence: q_nope[T, H, nope], q_rope[T, H, rope]
// against k_nope[S, H, nope], k_rope[S, rope], v[S, H, dv]; query t sits at
// position S - T + t and sees keys [0, that position]. out[T, H, dv].
struct MlaExpandedParams {
  const __nv_bfloat16* q_nope;
  const __nv_bfloat16* q_rope;
  const __nv_bfloat16* k_nope;
  const __nv_bfloat16* k_rope;
  const __nv_bfloat16* v;
  __nv_bfloat16* out;
  int num_queries;  // T
  int num_keys;     // S
  int heads;        // of k_nope and v (and of the grid)
  int q_heads;      // q_nope, q_rope and out rows step q_heads heads per token
  int nope;
  int rope;
  int dv;
  float softmax_scale;
};
cudaError_t MlaExpanded(const MlaExpandedParams& params, cudaStream_t stream);

}  // namespace mlaserve::cuda

#endif  // MLASERVE_KERNELS_CUDA_MLA_KERNELS_H_
