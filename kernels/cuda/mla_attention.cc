// Host side of MLA attention: shape and dtype checks, the split-KV work plan
// (made on the host from the AttentionLayout, uploaded once per distinct
// layout: every layer of a step reuses it), and the launches.
#include "kernels/cuda/mla_attention.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/mla/kernels.h"
#include "kernels/latent_row.h"
#include "kernels/shape_check.h"

namespace mlaserve {
namespace {

using cuda::MlaCombineItem;
using cuda::MlaTileKind;
using cuda::MlaWorkItem;
using bf16 = __nv_bfloat16;

// Keys per split: a tile of query rows attends to its keys in chunks of this
// many cache positions, one CTA each. Fixed (never derived from the batch), so
// a sequence is cut the same way whatever shares its batch and its output is
// bitwise the same; small enough that one long sequence still spreads over the
// GPU (64K context: 128 splits per tile).
constexpr int64_t kSplitKeys = 512;
static_assert(kSplitKeys % cuda::kMlaTileKeys == 0 && kSplitKeys <= cuda::kMlaGenericMaxKeys);

// The split-KV partial results of one launch group are bounded by this many
// bytes; a batch needing more runs as several groups (split kernel + combine
// each) reusing the same workspace. A group ends at a tile boundary, so the
// grouping never changes what a row computes.
constexpr int64_t kPartialBudgetBytes = int64_t{256} << 20;

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

absl::Status CheckOperand(absl::string_view op, absl::string_view name, const Tensor& t,
                          DType dtype = DType::kBF16) {
  if (t.device != Device::kCuda) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " is not a CUDA tensor"));
  }
  RETURN_IF_ERROR(CheckDType(op, name, t, dtype));
  if (t.data == nullptr && t.numel() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " has no storage"));
  }
  return absl::OkStatus();
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// A tile of query rows of one sequence, before it is cut into splits.
struct Tile {
  MlaTileKind kind;
  int32_t seq;
  int32_t q_row;
  int32_t num_rows;
  int32_t seq_row;
  int32_t prefix;
  int32_t table;
  int32_t max_keys;  // keys the tile's last row sees
  int32_t splits;
};

struct LaunchGroup {
  int64_t items_begin[cuda::kMlaNumTileKinds] = {};
  int64_t items_count[cuda::kMlaNumTileKinds] = {};
  int64_t combine_begin = 0;
  int64_t combine_count = 0;
  int32_t combine_max_rows = 0;
};

// Everything one call launches, and the metadata image it uploads:
// work items of each kind | combine items | block tables (16-byte aligned sections).
struct Plan {
  std::vector<LaunchGroup> groups;
  std::vector<uint8_t> image;
  size_t items_offset[cuda::kMlaNumTileKinds] = {};
  size_t combine_offset = 0;
  size_t tables_offset = 0;
  int64_t partial_rows = 0;  // the most any group needs
};

size_t AlignUp(size_t n) { return (n + 15) / 16 * 16; }

absl::StatusOr<Plan> MakePlan(const AttentionLayout& layout, int64_t heads, int64_t rank, bool tensor_cores) {
  const int64_t block_size = layout.block_size;
  std::vector<int32_t> tables;
  std::vector<Tile> tiles;
  for (size_t si = 0; si < layout.seqs.size(); ++si) {
    const SequenceSlice& seq = layout.seqs[si];
    const int64_t needed = (seq.context_len + block_size - 1) / block_size;
    const int64_t table = static_cast<int64_t>(tables.size());
    if (table + needed > kInt32Max) return absl::InvalidArgumentError("MlaAbsorbedAttention: block tables too long");
    tables.insert(tables.end(), seq.block_table.begin(), seq.block_table.begin() + needed);
    const int64_t rows = seq.num_tokens * heads;
    if (rows == 0) continue;
    const MlaTileKind kind = !tensor_cores ? MlaTileKind::kGeneric
                             : rows <= 32  ? MlaTileKind::kRows16
                                           : MlaTileKind::kRows64;
    const int64_t tile_rows = cuda::MlaTileRows(kind);
    const int64_t prefix = seq.context_len - seq.num_tokens;
    for (int64_t r0 = 0; r0 < rows; r0 += tile_rows) {
      const int64_t n = std::min(tile_rows, rows - r0);
      const int64_t max_keys = prefix + (r0 + n - 1) / heads + 1;
      tiles.push_back(Tile{.kind = kind,
                           .seq = static_cast<int32_t>(si),
                           .q_row = static_cast<int32_t>(seq.token_begin * heads + r0),
                           .num_rows = static_cast<int32_t>(n),
                           .seq_row = static_cast<int32_t>(r0),
                           .prefix = static_cast<int32_t>(prefix),
                           .table = static_cast<int32_t>(table),
                           .max_keys = static_cast<int32_t>(max_keys),
                           .splits = static_cast<int32_t>((max_keys + kSplitKeys - 1) / kSplitKeys)});
    }
  }

  // Launch groups of whole tiles within the partial-result budget.
  const int64_t budget_rows = std::max<int64_t>(1, kPartialBudgetBytes / ((rank + 1) * 4));
  auto partial_rows_of = [](const Tile& t) { return t.splits > 1 ? int64_t{t.splits} * t.num_rows : 0; };
  std::vector<std::pair<size_t, size_t>> group_tiles;  // [begin, end) in tiles
  {
    size_t begin = 0;
    int64_t used = 0;
    for (size_t i = 0; i < tiles.size(); ++i) {
      const int64_t need = partial_rows_of(tiles[i]);
      if (i > begin && used + need > budget_rows) {
        group_tiles.emplace_back(begin, i);
        begin = i;
        used = 0;
      }
      used += need;
    }
    if (begin < tiles.size()) group_tiles.emplace_back(begin, tiles.size());
  }

  Plan plan;
  std::vector<MlaWorkItem> items[cuda::kMlaNumTileKinds];
  std::vector<MlaCombineItem> combines;
  for (const auto& [begin, end] : group_tiles) {
    LaunchGroup group;
    for (int k = 0; k < cuda::kMlaNumTileKinds; ++k) group.items_begin[k] = static_cast<int64_t>(items[k].size());
    group.combine_begin = static_cast<int64_t>(combines.size());
    // Partial rows: each tile's splits contiguous.
    std::vector<int64_t> partial(end - begin, -1);
    int64_t used = 0;
    for (size_t i = begin; i < end; ++i) {
      if (tiles[i].splits > 1) {
        partial[i - begin] = used;
        group.combine_max_rows = std::max(group.combine_max_rows, tiles[i].num_rows);
        combines.push_back(MlaCombineItem{.q_row = tiles[i].q_row,
                                          .num_rows = tiles[i].num_rows,
                                          .partial = static_cast<int32_t>(used),
                                          .num_splits = tiles[i].splits});
        used += partial_rows_of(tiles[i]);
      }
    }
    if (used > kInt32Max) return absl::InvalidArgumentError("MlaAbsorbedAttention: context too long for one tile");
    plan.partial_rows = std::max(plan.partial_rows, used);
    // Work items: per sequence, split-major, so that the tiles of one split (the
    // head groups of a decode token) run side by side and share the cache rows in L2.
    for (size_t run = begin; run < end;) {
      size_t run_end = run;
      int32_t max_splits = 0;
      while (run_end < end && tiles[run_end].seq == tiles[run].seq)
        max_splits = std::max(max_splits, tiles[run_end++].splits);
      for (int32_t s = 0; s < max_splits; ++s) {
        for (size_t i = run; i < run_end; ++i) {
          const Tile& t = tiles[i];
          if (s >= t.splits) continue;
          const int64_t key_begin = s * kSplitKeys;
          const int64_t key_end = std::min<int64_t>(key_begin + kSplitKeys, t.max_keys);
          items[static_cast<int>(t.kind)].push_back(MlaWorkItem{
              .q_row = t.q_row,
              .num_rows = t.num_rows,
              .seq_row = t.seq_row,
              .prefix = t.prefix,
              .key_begin = static_cast<int32_t>(key_begin),
              .key_end = static_cast<int32_t>(key_end),
              .table = t.table,
              .partial = t.splits > 1 ? static_cast<int32_t>(partial[i - begin] + int64_t{s} * t.num_rows) : -1});
        }
      }
      run = run_end;
    }
    for (int k = 0; k < cuda::kMlaNumTileKinds; ++k) {
      group.items_count[k] = static_cast<int64_t>(items[k].size()) - group.items_begin[k];
    }
    group.combine_count = static_cast<int64_t>(combines.size()) - group.combine_begin;
    plan.groups.push_back(group);
  }

  // Items and combines first: their offsets depend only on their counts, so a
  // step whose block tables grew launches with the same arguments.
  size_t size = 0;
  for (int k = 0; k < cuda::kMlaNumTileKinds; ++k) {
    plan.items_offset[k] = size;
    size += AlignUp(items[k].size() * sizeof(MlaWorkItem));
  }
  plan.combine_offset = size;
  size += AlignUp(combines.size() * sizeof(MlaCombineItem));
  plan.tables_offset = size;
  size += AlignUp(tables.size() * sizeof(int32_t));
  plan.image.assign(size, 0);
  for (int k = 0; k < cuda::kMlaNumTileKinds; ++k) {
    std::memcpy(plan.image.data() + plan.items_offset[k], items[k].data(), items[k].size() * sizeof(MlaWorkItem));
  }
  std::memcpy(plan.image.data() + plan.combine_offset, combines.data(), combines.size() * sizeof(MlaCombineItem));
  std::memcpy(plan.image.data() + plan.tables_offset, tables.data(), tables.size() * sizeof(int32_t));
  return plan;
}

// The rows of q and out the layout's sequences reach (a step whose other
// sequences take the expanded form names only some of them).
int64_t RowsNamed(const AttentionLayout& layout) {
  int64_t rows = 0;
  for (const SequenceSlice& seq : layout.seqs) rows = std::max(rows, seq.token_begin + seq.num_tokens);
  return rows;
}

bool SameSeqs(const std::vector<SequenceSlice>& a, const std::vector<SequenceSlice>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].token_begin != b[i].token_begin || a[i].num_tokens != b[i].num_tokens ||
        a[i].context_len != b[i].context_len || a[i].block_table != b[i].block_table) {
      return false;
    }
  }
  return true;
}

}  // namespace

struct MlaAttention::Buffers {
  // Device memory, grown on demand (stream-ordered), reused across calls.
  void* meta = nullptr;
  size_t meta_bytes = 0;
  float* partial_out = nullptr;
  size_t partial_out_bytes = 0;
  float* partial_lse = nullptr;
  size_t partial_lse_bytes = 0;

  // The last plan and what it was made from: a call with the same layout (every
  // layer of a step) launches at once, without planning or uploading again.
  bool have_plan = false;
  int64_t block_size = 0, heads = 0, rank = 0, num_blocks = 0;
  bool tensor_cores = false;
  std::vector<SequenceSlice> seqs;
  Plan plan;
};

namespace {

absl::Status Reserve(void** ptr, size_t* capacity, size_t bytes, cudaStream_t stream) {
  if (bytes <= *capacity) return absl::OkStatus();
  if (*ptr != nullptr) CUDA_RETURN_IF_ERROR(cudaFreeAsync(*ptr, stream));
  *ptr = nullptr;
  *capacity = 0;
  CUDA_RETURN_IF_ERROR(cudaMallocAsync(ptr, bytes, stream));
  *capacity = bytes;
  return absl::OkStatus();
}

}  // namespace

MlaAttention::MlaAttention(cudaStream_t stream) : stream_(stream), buffers_(std::make_unique<Buffers>()) {}

MlaAttention::~MlaAttention() {
  for (void* p :
       {buffers_->meta, static_cast<void*>(buffers_->partial_out), static_cast<void*>(buffers_->partial_lse)}) {
    if (p != nullptr) cudaFreeAsync(p, stream_);  // errors at process exit are ignored
  }
}

absl::Status MlaAttention::Absorbed(const Tensor& q_latent, const Tensor& q_rope, const Tensor& cache, int64_t layer,
                                    const AttentionLayout& layout, float softmax_scale, Tensor* out) {
  constexpr absl::string_view kOp = "MlaAbsorbedAttention";
  RETURN_IF_ERROR(CheckOperand(kOp, "q_latent", q_latent));
  RETURN_IF_ERROR(CheckOperand(kOp, "q_rope", q_rope));
  const bool fp8 = IsFp8LatentCache(cache);
  RETURN_IF_ERROR(CheckOperand(kOp, "cache", cache, fp8 ? DType::kU8 : DType::kBF16));
  RETURN_IF_ERROR(CheckOperand(kOp, "out", *out));
  RETURN_IF_ERROR(CheckShape(kOp, "q_latent", q_latent, {-1, -1, -1}));
  const int64_t rows = q_latent.dim(0), named = RowsNamed(layout);
  if (named > rows) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": the layout's sequences reach row ", named, " of ", rows));
  }
  const int64_t heads = q_latent.dim(1), rank = q_latent.dim(2);
  RETURN_IF_ERROR(CheckShape(kOp, "q_rope", q_rope, {rows, heads, -1}));
  const int64_t rope = q_rope.dim(2);
  if (layout.block_size <= 0) return absl::InvalidArgumentError(absl::StrCat(kOp, ": block size ", layout.block_size));
  RETURN_IF_ERROR(CheckShape(kOp, "cache", cache, {-1, -1, layout.block_size, LatentRowWidth(cache, rank, rope)}));
  RETURN_IF_ERROR(CheckShape(kOp, "out", *out, {rows, heads, rank}));
  if (fp8 && rank % 16 != 0) {
    return absl::UnimplementedError(absl::StrCat(kOp, ": an FP8 cache needs a rank divisible by 16, not ", rank));
  }
  if (layer < 0 || layer >= cache.dim(1)) {
    return absl::OutOfRangeError(absl::StrCat(kOp, ": layer ", layer, " outside [0, ", cache.dim(1), ")"));
  }
  if (rows * heads > kInt32Max || rank > kInt32Max / 8 || rope > kInt32Max / 8) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": ", rows, " tokens x ", heads, " heads is too many"));
  }
  if (rank + rope > cuda::kMlaGenericMaxDims) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": rank ", rank, " + rope ", rope, " above ", cuda::kMlaGenericMaxDims));
  }
  if (layout.num_tokens() * heads == 0 || rank == 0) return absl::OkStatus();

  const Fp8LatentRow fp8_row{rank, rope};
  const bool tensor_cores = rank == cuda::kMlaRank && rope == cuda::kMlaRope && Aligned16(q_latent.data) &&
                            (!fp8 || (fp8_row.bytes() == cuda::kMlaFp8RowBytes &&
                                      fp8_row.scales_offset() == cuda::kMlaFp8ScalesAt &&
                                      fp8_row.rope_offset() == cuda::kMlaFp8RopeAt)) &&
                            Aligned16(q_rope.data) && Aligned16(cache.data) && Aligned16(out->data);
  RETURN_IF_ERROR(EnsurePlan(layout, heads, rank, cache.dim(0), tensor_cores));
  const Buffers& b = *buffers_;
  const uint8_t* meta = static_cast<const uint8_t*>(b.meta);
  cuda::MlaAbsorbedParams params{.q_latent = q_latent.as<const bf16>(),
                                 .q_rope = q_rope.as<const bf16>(),
                                 .cache = fp8 ? nullptr : cache.as<const bf16>(),
                                 .block_tables = reinterpret_cast<const int32_t*>(meta + b.plan.tables_offset),
                                 .out = out->as<bf16>(),
                                 .partial_out = b.partial_out,
                                 .partial_lse = b.partial_lse,
                                 .layers = cache.dim(1),
                                 .layer = layer,
                                 .block_size = static_cast<int>(layout.block_size),
                                 .heads = static_cast<int>(heads),
                                 .rank = static_cast<int>(rank),
                                 .rope = static_cast<int>(rope),
                                 .softmax_scale = softmax_scale,
                                 .fp8_cache = fp8 ? cache.as<const uint8_t>() : nullptr,
                                 .fp8_row_bytes = static_cast<int>(fp8_row.bytes()),
                                 .fp8_scales_at = static_cast<int>(fp8_row.scales_offset()),
                                 .fp8_rope_at = static_cast<int>(fp8_row.rope_offset())};
  const auto* combines = reinterpret_cast<const MlaCombineItem*>(meta + b.plan.combine_offset);
  for (const LaunchGroup& group : b.plan.groups) {
    for (int k = 0; k < cuda::kMlaNumTileKinds; ++k) {
      if (group.items_count[k] == 0) continue;
      const auto* items = reinterpret_cast<const MlaWorkItem*>(meta + b.plan.items_offset[k]) + group.items_begin[k];
      CUDA_RETURN_IF_ERROR(cuda::MlaAbsorbed(static_cast<MlaTileKind>(k), items, static_cast<int>(group.items_count[k]),
                                             params, stream_));
    }
    CUDA_RETURN_IF_ERROR(cuda::MlaCombine(combines + group.combine_begin, static_cast<int>(group.combine_count),
                                          group.combine_max_rows, b.partial_out, b.partial_lse, static_cast<int>(rank),
                                          params.out, stream_));
  }
  return absl::OkStatus();
}

absl::Status MlaAttention::EnsurePlan(const AttentionLayout& layout, int64_t heads, int64_t rank,
                                      int64_t num_blocks, bool tensor_cores) {
  constexpr absl::string_view kOp = "MlaAbsorbedAttention";
  Buffers& b = *buffers_;
  const bool same_shape = b.have_plan && b.block_size == layout.block_size && b.heads == heads && b.rank == rank &&
                          b.num_blocks == num_blocks && b.tensor_cores == tensor_cores;
  // The layout prepared for this step is the plan's by construction: no need to compare every block table.
  if (same_shape && (&layout == prepared_ || SameSeqs(b.seqs, layout.seqs))) return absl::OkStatus();
  if (launch_only_) {
    return absl::FailedPreconditionError(absl::StrCat(kOp, ": the step's attention was not prepared"));
  }
  b.have_plan = false;
  for (const SequenceSlice& seq : layout.seqs) {
    const int64_t needed = (seq.context_len + layout.block_size - 1) / layout.block_size;
    if (seq.num_tokens < 0 || seq.token_begin < 0 || seq.num_tokens > seq.context_len ||
        seq.context_len > kInt32Max - kSplitKeys ||
        static_cast<int64_t>(seq.block_table.size()) < needed) {
      return absl::InvalidArgumentError(absl::StrCat(kOp, ": sequence of ", seq.num_tokens, " tokens at ",
                                                     seq.token_begin, " with ", seq.context_len, " positions and ",
                                                     seq.block_table.size(), " blocks of ", layout.block_size));
    }
    for (int64_t i = 0; i < needed; ++i) {
      if (seq.block_table[i] < 0 || seq.block_table[i] >= num_blocks) {
        return absl::OutOfRangeError(
            absl::StrCat(kOp, ": block ", seq.block_table[i], " outside the pool of ", num_blocks));
      }
    }
  }
  ASSIGN_OR_RETURN(b.plan, MakePlan(layout, heads, rank, tensor_cores));
  RETURN_IF_ERROR(Reserve(&b.meta, &b.meta_bytes, std::max<size_t>(b.plan.image.size(), 16), stream_));
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(b.meta, b.plan.image.data(), b.plan.image.size(), cudaMemcpyHostToDevice, stream_));
  const size_t partial_rows = static_cast<size_t>(std::max<int64_t>(b.plan.partial_rows, 1));
  RETURN_IF_ERROR(Reserve(reinterpret_cast<void**>(&b.partial_out), &b.partial_out_bytes,
                          partial_rows * rank * sizeof(float), stream_));
  RETURN_IF_ERROR(
      Reserve(reinterpret_cast<void**>(&b.partial_lse), &b.partial_lse_bytes, partial_rows * sizeof(float), stream_));
  b.block_size = layout.block_size;
  b.heads = heads;
  b.rank = rank;
  b.num_blocks = num_blocks;
  b.tensor_cores = tensor_cores;
  b.seqs = layout.seqs;
  b.have_plan = true;
  return absl::OkStatus();
}

absl::Status MlaAttention::Prepare(const AttentionLayout& layout, int64_t heads, int64_t rank, int64_t rope,
                                   int64_t num_blocks) {
  if (layout.num_tokens() * heads == 0 || rank == 0) return absl::OkStatus();
  // Backend tensors are 256-byte aligned: the tensor-core path applies whenever the dims allow it.
  RETURN_IF_ERROR(EnsurePlan(layout, heads, rank, num_blocks, rank == cuda::kMlaRank && rope == cuda::kMlaRope));
  prepared_ = &layout;
  return absl::OkStatus();
}

uint64_t MlaAttention::LaunchSignature() const {
  const Buffers& b = *buffers_;
  if (!b.have_plan) return 0;
  std::vector<int64_t> fields;
  for (const LaunchGroup& g : b.plan.groups) {
    for (int k = 0; k < cuda::kMlaNumTileKinds; ++k) fields.insert(fields.end(), {g.items_begin[k], g.items_count[k]});
    fields.insert(fields.end(), {g.combine_begin, g.combine_count, g.combine_max_rows});
  }
  for (size_t offset : b.plan.items_offset) fields.push_back(static_cast<int64_t>(offset));
  fields.insert(fields.end(), {static_cast<int64_t>(b.plan.combine_offset), static_cast<int64_t>(b.plan.tables_offset),
                               b.tensor_cores});
  return absl::HashOf(fields, b.meta, b.partial_out, b.partial_lse);
}

absl::Status MlaAttention::Expanded(const Tensor& q_nope, const Tensor& q_rope, const Tensor& k_nope,
                                    const Tensor& k_rope, const Tensor& v, int64_t first_head, float softmax_scale,
                                    Tensor* out) {
  constexpr absl::string_view kOp = "MlaExpandedAttention";
  RETURN_IF_ERROR(CheckOperand(kOp, "q_nope", q_nope));
  RETURN_IF_ERROR(CheckOperand(kOp, "q_rope", q_rope));
  RETURN_IF_ERROR(CheckOperand(kOp, "k_nope", k_nope));
  RETURN_IF_ERROR(CheckOperand(kOp, "k_rope", k_rope));
  RETURN_IF_ERROR(CheckOperand(kOp, "v", v));
  RETURN_IF_ERROR(CheckOperand(kOp, "out", *out));
  RETURN_IF_ERROR(CheckShape(kOp, "q_nope", q_nope, {-1, -1, -1}));
  const int64_t rows = q_nope.dim(0), q_heads = q_nope.dim(1), nope = q_nope.dim(2);
  RETURN_IF_ERROR(CheckShape(kOp, "q_rope", q_rope, {rows, q_heads, -1}));
  const int64_t rope = q_rope.dim(2);
  RETURN_IF_ERROR(CheckShape(kOp, "k_nope", k_nope, {-1, -1, nope}));
  const int64_t keys = k_nope.dim(0), heads = k_nope.dim(1);
  RETURN_IF_ERROR(CheckShape(kOp, "k_rope", k_rope, {keys, rope}));
  RETURN_IF_ERROR(CheckShape(kOp, "v", v, {keys, heads, -1}));
  const int64_t dv = v.dim(2);
  RETURN_IF_ERROR(CheckShape(kOp, "out", *out, {rows, q_heads, dv}));
  if (rows > keys) return absl::InvalidArgumentError(absl::StrCat(kOp, ": more queries than keys"));
  if (first_head < 0 || first_head + heads > q_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": heads [", first_head, ", ", first_head + heads, ") outside the queries' ", q_heads));
  }
  if (keys * heads * std::max({nope, dv, int64_t{1}}) > (int64_t{1} << 62) ||
      rows * q_heads * std::max({nope, dv, int64_t{1}}) > (int64_t{1} << 62) || keys > kInt32Max || heads > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": too large"));
  }
  if (dv > cuda::kMlaExpandedMaxDv || nope + rope > cuda::kMlaGenericMaxDims) {
    return absl::UnimplementedError(absl::StrCat(kOp, ": v_head_dim ", dv, " or qk dims ", nope + rope, " too large"));
  }
  if (rows == 0 || heads == 0 || dv == 0) return absl::OkStatus();
  // The kernels see the group's heads: q and out start at its first head and step q_heads per token.
  const cuda::MlaExpandedParams params{.q_nope = q_nope.as<const bf16>() + first_head * nope,
                                       .q_rope = q_rope.as<const bf16>() + first_head * rope,
                                       .k_nope = k_nope.as<const bf16>(),
                                       .k_rope = k_rope.as<const bf16>(),
                                       .v = v.as<const bf16>(),
                                       .out = out->as<bf16>() + first_head * dv,
                                       .num_queries = static_cast<int>(rows),
                                       .num_keys = static_cast<int>(keys),
                                       .heads = static_cast<int>(heads),
                                       .q_heads = static_cast<int>(q_heads),
                                       .nope = static_cast<int>(nope),
                                       .rope = static_cast<int>(rope),
                                       .dv = static_cast<int>(dv),
                                       .softmax_scale = softmax_scale};
  CUDA_RETURN_IF_ERROR(cuda::MlaExpanded(params, stream_));
  return absl::OkStatus();
}

}  // namespace mlaserve
