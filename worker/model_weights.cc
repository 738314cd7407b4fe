#include "worker/model_weights.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <future>
#include <thread>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/random_normal.h"

namespace mlaserve {
namespace {

// Row blocks of a [num_heads * (a + b), cols] matrix: per head, `a` rows then
// `b` rows. Returns the stacked `a` parts and the stacked `b` parts.
std::pair<std::vector<float>, std::vector<float>> SplitHeadRows(const std::vector<float>& m, int64_t num_heads,
                                                                int64_t a, int64_t b, int64_t cols) {
  std::vector<float> first, second;
  first.reserve(num_heads * a * cols);
  second.reserve(num_heads * b * cols);
  for (int64_t h = 0; h < num_heads; ++h) {
    auto head = m.begin() + h * (a + b) * cols;
    first.insert(first.end(), head, head + a * cols);
    second.insert(second.end(), head + a * cols, head + (a + b) * cols);
  }
  return {std::move(first), std::move(second)};
}

// Per head, [rows, cols] -> [cols, rows].
std::vector<float> TransposeHeads(const std::vector<float>& m, int64_t num_heads, int64_t rows, int64_t cols) {
  std::vector<float> out(m.size());
  for (int64_t h = 0; h < num_heads; ++h) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) out[(h * cols + c) * rows + r] = m[(h * rows + r) * cols + c];
    }
  }
  return out;
}

// Reads of checkpoint bytes: slices of this many bytes, this many at once.
constexpr size_t kReadSliceBytes = 16 << 20;
constexpr size_t kReadThreads = 8;

// Rows `rows` of the checkpoint tensor `name` of shape `shape` (a row is
// everything past the first dimension).
struct RowPiece {
  std::string name;
  std::vector<int64_t> shape;
  Range rows;
};

int64_t RowSize(const std::vector<int64_t>& shape) {
  int64_t size = 1;
  for (size_t i = 1; i < shape.size(); ++i) size *= shape[i];
  return size;
}

// One head's block of rows per local head: rows [h * (a + b) + offset, + count) of each head h in `heads`.
std::vector<RowPiece> HeadRows(const std::string& name, std::vector<int64_t> shape, Range heads, int64_t a, int64_t b,
                               int64_t offset, int64_t count) {
  std::vector<RowPiece> pieces;
  for (int64_t h = heads.begin; h < heads.end; ++h) {
    pieces.push_back({name, shape, {h * (a + b) + offset, h * (a + b) + offset + count}});
  }
  return pieces;
}

class Loader {
 public:
  Loader(const Checkpoint& checkpoint, const ModelConfig& config, const ShardLayout& shard, Ops& ops,
         WeightsDtype dtype)
      : checkpoint_(checkpoint), config_(config), shard_(shard), ops_(ops), dtype_(dtype) {}

  absl::StatusOr<ModelWeights> LoadAll(const LoadProgress& progress) {
    const ModelConfig& c = config_;
    ModelWeights w;
    // The embedding shard gets one extra zero row: ids outside the shard look it up.
    ASSIGN_OR_RETURN(w.embed, LoadVocabRows("model.embed_tokens.weight", shard_.vocab_shard_rows + 1));
    Prefetch(0).wait();
    for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
      // The next layer's pages are read (from whichever files) while this one uploads.
      std::future<void> next = Prefetch(layer + 1);
      ASSIGN_OR_RETURN(LayerWeights lw, LoadLayer(layer));
      w.layers.push_back(std::move(lw));
      if (progress) progress(layer + 1, c.num_hidden_layers, bytes_read_);
    }
    ASSIGN_OR_RETURN(w.final_norm, Load("model.norm.weight", {c.hidden_size}));
    const char* head_name = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    ASSIGN_OR_RETURN(w.lm_head, LoadVocabRows(head_name, shard_.vocab_shard_rows));
    return w;
  }

 private:
  // Starts reading layer `layer`'s tensors this shard uses (all but other
  // shards' routed experts) on another thread.
  std::future<void> Prefetch(int64_t layer) {
    return std::async(std::launch::async, [this, layer] {
      const std::string experts = absl::StrCat("model.layers.", layer, ".mlp.experts.");
      checkpoint_.Prefetch(absl::StrCat("model.layers.", layer, "."), [&](std::string_view name) {
        if (name.substr(0, experts.size()) != experts) return true;
        int64_t e = 0;
        for (char ch : name.substr(experts.size())) {
          if (ch < '0' || ch > '9') break;
          e = e * 10 + (ch - '0');
        }
        return e >= shard_.experts.begin && e < shard_.experts.end;
      });
    });
  }

  absl::StatusOr<Tensor> FromHost(const std::vector<float>& values, std::vector<int64_t> shape) {
    ASSIGN_OR_RETURN(Tensor t, ops_.Empty(ops_.storage_dtype(), std::move(shape)));
    RETURN_IF_ERROR(ops_.Upload(values, &t));
    return t;
  }

  // A whole tensor, unquantized.
  absl::StatusOr<Tensor> Load(const std::string& name, std::vector<int64_t> shape) {
    return LoadPieces({{name, shape, {0, shape[0]}}}, {0, RowSize(shape)}, shape, false);
  }

  // A projection: the pieces' rows stacked (columns `cols`), FP8 or not as dtype_ says.
  absl::StatusOr<Tensor> Projection(const std::vector<RowPiece>& pieces, Range cols, std::vector<int64_t> shape) {
    return LoadPieces(pieces, cols, std::move(shape), true);
  }

  // The pieces' rows stacked, columns `cols` of each, as a tensor of `shape`
  // whose rows past the pieces' are zero.
  absl::StatusOr<Tensor> LoadPieces(const std::vector<RowPiece>& pieces, Range cols, std::vector<int64_t> shape,
                                    bool projection) {
    ASSIGN_OR_RETURN(const TensorView* first, checkpoint_.Get(pieces.front().name));
    const DType stored = first->dtype;
    for (const RowPiece& piece : pieces) {
      ASSIGN_OR_RETURN(const TensorView* view, checkpoint_.Get(piece.name));
      if (view->dtype != stored) {
        return absl::InvalidArgumentError(absl::StrCat(checkpoint_.FileOf(piece.name), ": tensor \"", piece.name,
                                                       "\" is ", std::string(DTypeName(view->dtype)), ", expected ",
                                                       std::string(DTypeName(stored)), " like \"", pieces.front().name, "\""));
      }
    }
    // The FP8 GEMMs take rows of a multiple of 16 values.
    const bool fp8_shape = shape.back() % 16 == 0;
    if (projection && fp8_shape && stored == DType::kF8E4M3 && dtype_ != WeightsDtype::kBf16) {
      ASSIGN_OR_RETURN(std::optional<Tensor> fp8, LoadFp8(pieces, cols, shape));
      if (fp8.has_value()) return *std::move(fp8);
    }
    ASSIGN_OR_RETURN(Tensor t, ops_.Empty(ops_.storage_dtype(), shape));
    int64_t rows = 0;
    for (const RowPiece& piece : pieces) rows += piece.rows.size();
    Tensor part = SliceRows(t, 0, rows);
    if (stored == ops_.storage_dtype()) {
      ASSIGN_OR_RETURN(std::string bytes, ReadPieces(pieces, cols, DTypeBytes(stored)));
      RETURN_IF_ERROR(ops_.UploadBytes(bytes.data(), bytes.size(), &part));
    } else {
      std::vector<float> values;
      values.reserve(rows * cols.size());
      for (const RowPiece& piece : pieces) {
        ASSIGN_OR_RETURN(std::vector<float> v, ReadF32(piece, cols));
        values.insert(values.end(), v.begin(), v.end());
      }
      bytes_read_ += static_cast<int64_t>(values.size() * DTypeBytes(stored));
      RETURN_IF_ERROR(ops_.Upload(values, &part));
    }
    if (rows < shape[0]) {
      Tensor padding = SliceRows(t, rows, shape[0] - rows);
      RETURN_IF_ERROR(ops_.Fill(&padding, 0.0f));
    }
    if (projection && fp8_shape && dtype_ == WeightsDtype::kFp8) return ops_.QuantizeFp8(t);
    return t;
  }

  // The pieces' bytes as stored, concatenated, read by several threads in
  // slices of at most kReadSliceBytes: the page faults on the mapped files
  // (the disk reads) of different slices and files then overlap.
  // REQUIRES: every piece's elements are `element_bytes` wide (LoadPieces checked one dtype).
  absl::StatusOr<std::string> ReadPieces(const std::vector<RowPiece>& pieces, Range cols, size_t element_bytes) {
    struct Slice {
      const RowPiece* piece;
      Range rows;
      size_t offset, bytes;
    };
    std::vector<Slice> slices;
    size_t total = 0;
    const size_t row_bytes = std::max<size_t>(1, cols.size() * element_bytes);
    const int64_t rows_per_slice = std::max<int64_t>(1, kReadSliceBytes / row_bytes);
    for (const RowPiece& piece : pieces) {
      for (int64_t r = piece.rows.begin; r < piece.rows.end; r += rows_per_slice) {
        const int64_t end = std::min(piece.rows.end, r + rows_per_slice);
        slices.push_back({&piece, {r, end}, total, (end - r) * row_bytes});
        total += slices.back().bytes;
      }
    }
    std::string bytes(total, '\0');
    const int threads = static_cast<int>(std::min<size_t>(slices.size(), kReadThreads));
    std::vector<absl::Status> status(threads);
    std::atomic<size_t> next{0};
    std::vector<std::thread> readers;
    for (int t = 0; t < threads; ++t) {
      readers.emplace_back([&, t] {
        for (size_t i = next++; i < slices.size() && status[t].ok(); i = next++) {
          const Slice& slice = slices[i];
          status[t] = checkpoint_.ReadBytesInto(slice.piece->name, slice.piece->shape, slice.rows.begin,
                                                slice.rows.end, cols.begin, cols.end,
                                                absl::MakeSpan(bytes.data() + slice.offset, slice.bytes));
        }
      });
    }
    for (std::thread& reader : readers) reader.join();
    for (const absl::Status& s : status) RETURN_IF_ERROR(s);
    bytes_read_ += static_cast<int64_t>(total);
    return bytes;
  }

  // An FP8 projection with its scales per row; nullopt when the columns split
  // a 128-column group (the caller dequantizes instead).
  absl::StatusOr<std::optional<Tensor>> LoadFp8(const std::vector<RowPiece>& pieces, Range cols,
                                                const std::vector<int64_t>& shape) {
    std::vector<float> scales;
    for (const RowPiece& piece : pieces) {
      absl::StatusOr<std::vector<float>> s =
          checkpoint_.ReadFp8RowScales(piece.name, piece.rows.begin, piece.rows.end, cols.begin, cols.end);
      if (absl::IsFailedPrecondition(s.status())) return std::optional<Tensor>();
      if (!s.ok()) return s.status();
      scales.insert(scales.end(), s->begin(), s->end());
    }
    ASSIGN_OR_RETURN(std::string bytes, ReadPieces(pieces, cols, DTypeBytes(DType::kF8E4M3)));
    ASSIGN_OR_RETURN(Tensor q, ops_.Empty(DType::kF8E4M3, shape));
    if (static_cast<int64_t>(bytes.size()) != q.numel()) {
      return absl::InternalError(absl::StrCat("FP8 pieces of \"", pieces.front().name, "\": ", bytes.size(),
                                              " bytes for ", q.ShapeString()));
    }
    RETURN_IF_ERROR(ops_.UploadBytes(bytes.data(), bytes.size(), &q));
    std::vector<int64_t> scale_shape = shape;
    scale_shape.back() = Fp8Groups(shape.back());
    ASSIGN_OR_RETURN(Tensor scale, ops_.Empty(DType::kF32, std::move(scale_shape)));
    // As bytes: scales are float32 on every backend (Upload would store them as the backend stores values).
    RETURN_IF_ERROR(ops_.UploadBytes(scales.data(), scales.size() * sizeof(float), &scale));
    bytes_read_ += static_cast<int64_t>(scales.size() * sizeof(float));
    q.scale = std::make_shared<Tensor>(std::move(scale));
    return std::optional<Tensor>(std::move(q));
  }

  // A piece as float32 (FP8 dequantized), columns `cols` of each row.
  absl::StatusOr<std::vector<float>> ReadF32(const RowPiece& piece, Range cols) {
    const int64_t row_size = RowSize(piece.shape);
    if (cols.begin == 0 && cols.end == row_size) {
      return checkpoint_.ReadRowsF32(piece.name, piece.shape, piece.rows.begin, piece.rows.end);
    }
    if (piece.rows.begin == 0 && piece.rows.end == piece.shape[0]) {
      return checkpoint_.ReadColumnsF32(piece.name, piece.shape, cols.begin, cols.end);
    }
    ASSIGN_OR_RETURN(std::vector<float> rows,
                     checkpoint_.ReadRowsF32(piece.name, piece.shape, piece.rows.begin, piece.rows.end));
    std::vector<float> out;
    out.reserve(piece.rows.size() * cols.size());
    for (int64_t r = 0; r < piece.rows.size(); ++r) {
      out.insert(out.end(), rows.begin() + r * row_size + cols.begin, rows.begin() + r * row_size + cols.end);
    }
    return out;
  }

  // This shard's vocabulary rows of a [vocab, hidden] table, zero-padded to `rows`.
  absl::StatusOr<Tensor> LoadVocabRows(const std::string& name, int64_t rows) {
    const int64_t d = config_.hidden_size;
    return LoadPieces({{name, {config_.vocab_size, d}, shard_.vocab}}, {0, d}, {rows, d}, false);
  }

  absl::StatusOr<LayerWeights> LoadLayer(int64_t layer) {
    const std::string prefix = absl::StrCat("model.layers.", layer, ".");
    LayerWeights lw;
    ASSIGN_OR_RETURN(lw.input_norm, Load(prefix + "input_layernorm.weight", {config_.hidden_size}));
    ASSIGN_OR_RETURN(lw.post_attention_norm, Load(prefix + "post_attention_layernorm.weight", {config_.hidden_size}));
    RETURN_IF_ERROR(LoadAttention(prefix + "self_attn.", &lw));
    lw.is_moe = config_.is_moe_layer(layer);
    if (lw.is_moe) {
      RETURN_IF_ERROR(LoadMoe(prefix + "mlp.", &lw));
    } else {
      ASSIGN_OR_RETURN(lw.mlp, LoadMlp(prefix + "mlp.", config_.intermediate_size, shard_.dense_inner));
    }
    return lw;
  }

  // Heads are split: the q and kv_b rows of this shard's heads, o_proj's
  // matching columns. The latent projections are whole on every rank.
  absl::Status LoadAttention(const std::string& prefix, LayerWeights* lw) {
    const ModelConfig& c = config_;
    const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
    const int64_t rank = c.kv_lora_rank, v = c.v_head_dim, local = shard_.heads.size(), d = c.hidden_size;
    const Range h = shard_.heads;
    int64_t q_in = d;
    std::string q_name = prefix + "q_proj.weight";
    if (c.q_lora_rank > 0) {
      q_in = c.q_lora_rank;
      q_name = prefix + "q_b_proj.weight";
      ASSIGN_OR_RETURN(lw->q_a, Projection({{prefix + "q_a_proj.weight", {q_in, d}, {0, q_in}}}, {0, d}, {q_in, d}));
      ASSIGN_OR_RETURN(lw->q_a_norm, Load(prefix + "q_a_layernorm.weight", {q_in}));
    }
    const std::vector<int64_t> q_shape{heads * (nope + rope), q_in};
    ASSIGN_OR_RETURN(lw->q_nope, Projection(HeadRows(q_name, q_shape, h, nope, rope, 0, nope), {0, q_in},
                                            {local * nope, q_in}));
    ASSIGN_OR_RETURN(lw->q_rope, Projection(HeadRows(q_name, q_shape, h, nope, rope, nope, rope), {0, q_in},
                                            {local * rope, q_in}));

    const std::string kv_a = prefix + "kv_a_proj_with_mqa.weight";
    ASSIGN_OR_RETURN(lw->kv_a_latent, Projection({{kv_a, {rank + rope, d}, {0, rank}}}, {0, d}, {rank, d}));
    ASSIGN_OR_RETURN(lw->kv_a_rope, Projection({{kv_a, {rank + rope, d}, {rank, rank + rope}}}, {0, d}, {rope, d}));
    ASSIGN_OR_RETURN(lw->kv_a_norm, Load(prefix + "kv_a_layernorm.weight", {rank}));

    // kv_b is absorbed (W_UK both ways, W_UV): rearranged on the host, unquantized.
    const std::string kv_b_name = prefix + "kv_b_proj.weight";
    ASSIGN_OR_RETURN(std::vector<float> kv_b, checkpoint_.ReadRowsF32(kv_b_name, {heads * (nope + v), rank},
                                                                      h.begin * (nope + v), h.end * (nope + v)));
    ASSIGN_OR_RETURN(const TensorView* kv_b_view, checkpoint_.Get(kv_b_name));
    bytes_read_ += static_cast<int64_t>(kv_b.size() * DTypeBytes(kv_b_view->dtype));
    auto [w_uk, w_uv] = SplitHeadRows(kv_b, local, nope, v, rank);
    ASSIGN_OR_RETURN(lw->w_uk, FromHost(w_uk, {local * nope, rank}));
    ASSIGN_OR_RETURN(lw->w_uk_t, FromHost(TransposeHeads(w_uk, local, nope, rank), {local, rank, nope}));
    ASSIGN_OR_RETURN(lw->w_uv, FromHost(w_uv, {local, v, rank}));
    ASSIGN_OR_RETURN(lw->o_proj, Projection({{prefix + "o_proj.weight", {d, heads * v}, {0, d}}},
                                            {h.begin * v, h.end * v}, {d, local * v}));
    return absl::OkStatus();
  }

  // Rows `inner` of gate_proj then of up_proj of one MLP of inner size `total`.
  std::vector<RowPiece> GateUp(const std::string& prefix, int64_t total, Range inner) const {
    const std::vector<int64_t> shape{total, config_.hidden_size};
    return {{prefix + "gate_proj.weight", shape, inner}, {prefix + "up_proj.weight", shape, inner}};
  }

  // An MLP split along its inner dimension: this shard's slice `inner` of `total`.
  absl::StatusOr<MlpWeights> LoadMlp(const std::string& prefix, int64_t total, Range inner) {
    const int64_t d = config_.hidden_size;
    MlpWeights m;
    ASSIGN_OR_RETURN(m.gate_up, Projection(GateUp(prefix, total, inner), {0, d}, {2 * inner.size(), d}));
    ASSIGN_OR_RETURN(m.down, Projection({{prefix + "down_proj.weight", {d, total}, {0, d}}}, inner, {d, inner.size()}));
    return m;
  }

  // The router whole; this shard's experts (each its inner slice); the shared
  // experts split like a dense MLP.
  absl::Status LoadMoe(const std::string& prefix, LayerWeights* lw) {
    const ModelConfig& c = config_;
    const int64_t experts = c.n_routed_experts, total = c.moe_intermediate_size, d = c.hidden_size;
    const int64_t local = shard_.experts.size(), inner = shard_.expert_inner.size();
    ASSIGN_OR_RETURN(lw->router, Load(prefix + "gate.weight", {experts, d}));
    const std::string bias_name = prefix + "gate.e_score_correction_bias";
    if (c.topk_method == TopkMethod::kNoauxTc) {
      ASSIGN_OR_RETURN(lw->router_bias, Load(bias_name, {experts}));
    }
    std::vector<RowPiece> gate_up;
    for (int64_t e = shard_.experts.begin; e < shard_.experts.end; ++e) {
      for (RowPiece& piece : GateUp(absl::StrCat(prefix, "experts.", e, "."), total, shard_.expert_inner)) {
        gate_up.push_back(std::move(piece));
      }
    }
    ASSIGN_OR_RETURN(Tensor stacked, Projection(gate_up, {0, d}, {local * 2 * inner, d}));
    lw->experts_gate_up = Reshape(stacked, {local, 2 * inner, d});
    // Each expert's down_proj, columns `expert_inner`, one expert after the other.
    std::vector<RowPiece> down;
    for (int64_t e = shard_.experts.begin; e < shard_.experts.end; ++e) {
      down.push_back({absl::StrCat(prefix, "experts.", e, ".down_proj.weight"), {d, total}, {0, d}});
    }
    ASSIGN_OR_RETURN(Tensor down_rows, Projection(down, shard_.expert_inner, {local * d, inner}));
    lw->experts_down = Reshape(down_rows, {local, d, inner});
    lw->has_shared_experts = c.n_shared_experts > 0;
    if (lw->has_shared_experts) {
      ASSIGN_OR_RETURN(lw->mlp, LoadMlp(prefix + "shared_experts.", total * c.n_shared_experts, shard_.shared_inner));
    }
    return absl::OkStatus();
  }

  const Checkpoint& checkpoint_;
  const ModelConfig& config_;
  const ShardLayout& shard_;
  Ops& ops_;
  const WeightsDtype dtype_;
  int64_t bytes_read_ = 0;
};

// Makes the tensors of RandomModelWeights, each from its own seed.
class RandomMaker {
 public:
  RandomMaker(Ops& ops, uint64_t seed, bool fp8) : ops_(ops), seed_(seed), fp8_(fp8) {}

  absl::StatusOr<Tensor> Normal(std::vector<int64_t> shape, float mean, float stddev) {
    ASSIGN_OR_RETURN(Tensor t, ops_.Empty(ops_.storage_dtype(), std::move(shape)));
    RETURN_IF_ERROR(ops_.FillRandom(&t, SplitMix64(seed_ + next_++), mean, stddev));
    return t;
  }
  // A weight reading `fan_in` inputs (the whole model's, not the shard's).
  absl::StatusOr<Tensor> Matrix(std::vector<int64_t> shape, int64_t fan_in) {
    return Normal(std::move(shape), 0.0f, 1.0f / std::sqrt(static_cast<float>(fan_in)));
  }
  // A linear projection: a Matrix, quantized when the model is FP8.
  absl::StatusOr<Tensor> Projection(std::vector<int64_t> shape, int64_t fan_in) {
    ASSIGN_OR_RETURN(Tensor m, Matrix(shape, fan_in));
    if (!fp8_ || shape.back() % 16 != 0) return m;
    return ops_.QuantizeFp8(m);
  }
  absl::StatusOr<Tensor> Norm(int64_t dim) { return Normal({dim}, 1.0f, 0.1f); }
  absl::StatusOr<MlpWeights> Mlp(int64_t hidden, int64_t inner, int64_t total_inner) {
    MlpWeights m;
    ASSIGN_OR_RETURN(m.gate_up, Projection({2 * inner, hidden}, hidden));
    ASSIGN_OR_RETURN(m.down, Projection({hidden, inner}, total_inner));
    return m;
  }

 private:
  Ops& ops_;
  const uint64_t seed_;
  const bool fp8_;
  uint64_t next_ = 0;
};

absl::Status RandomAttention(const ModelConfig& c, const ShardLayout& s, Ops& ops, RandomMaker& make,
                             LayerWeights* lw) {
  const int64_t d = c.hidden_size, heads = s.heads.size(), nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const int64_t rank = c.kv_lora_rank, v = c.v_head_dim;
  int64_t q_in = d;
  if (c.q_lora_rank > 0) {
    q_in = c.q_lora_rank;
    ASSIGN_OR_RETURN(lw->q_a, make.Projection({q_in, d}, d));
    ASSIGN_OR_RETURN(lw->q_a_norm, make.Norm(q_in));
  }
  ASSIGN_OR_RETURN(lw->q_nope, make.Projection({heads * nope, q_in}, q_in));
  ASSIGN_OR_RETURN(lw->q_rope, make.Projection({heads * rope, q_in}, q_in));
  ASSIGN_OR_RETURN(lw->kv_a_latent, make.Projection({rank, d}, d));
  ASSIGN_OR_RETURN(lw->kv_a_rope, make.Projection({rope, d}, d));
  ASSIGN_OR_RETURN(lw->kv_a_norm, make.Norm(rank));
  ASSIGN_OR_RETURN(lw->w_uk, make.Matrix({heads * nope, rank}, rank));
  // The absorbed form's W_UK_T must be W_UK's transpose: through the host.
  std::vector<float> w_uk(lw->w_uk.numel());
  RETURN_IF_ERROR(ops.Download(lw->w_uk, absl::MakeSpan(w_uk)));
  ASSIGN_OR_RETURN(lw->w_uk_t, ops.Empty(ops.storage_dtype(), {heads, rank, nope}));
  RETURN_IF_ERROR(ops.Upload(TransposeHeads(w_uk, heads, nope, rank), &lw->w_uk_t));
  ASSIGN_OR_RETURN(lw->w_uv, make.Matrix({heads, v, rank}, rank));
  ASSIGN_OR_RETURN(lw->o_proj, make.Projection({d, heads * v}, c.num_attention_heads * v));
  return absl::OkStatus();
}

absl::Status RandomMoe(const ModelConfig& c, const ShardLayout& s, RandomMaker& make, LayerWeights* lw) {
  const int64_t d = c.hidden_size, experts = c.n_routed_experts, inner = s.expert_inner.size();
  ASSIGN_OR_RETURN(lw->router, make.Matrix({experts, d}, d));
  if (c.topk_method == TopkMethod::kNoauxTc) {
    ASSIGN_OR_RETURN(lw->router_bias, make.Normal({experts}, 0.0f, 0.1f));
  }
  ASSIGN_OR_RETURN(lw->experts_gate_up, make.Projection({s.experts.size(), 2 * inner, d}, d));
  ASSIGN_OR_RETURN(lw->experts_down, make.Projection({s.experts.size(), d, inner}, c.moe_intermediate_size));
  lw->has_shared_experts = c.n_shared_experts > 0;
  if (lw->has_shared_experts) {
    ASSIGN_OR_RETURN(lw->mlp, make.Mlp(d, s.shared_inner.size(), c.moe_intermediate_size * c.n_shared_experts));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelWeights> RandomModelWeights(const ModelConfig& c, const ShardLayout& shard, Ops& ops,
                                                uint64_t seed, WeightsDtype dtype) {
  RandomMaker make(ops, SplitMix64(seed) ^ static_cast<uint64_t>(shard.group_rank), dtype == WeightsDtype::kFp8);
  const int64_t d = c.hidden_size;
  ModelWeights w;
  ASSIGN_OR_RETURN(w.embed, make.Matrix({shard.vocab_shard_rows + 1, d}, d));
  Tensor padding = SliceRows(w.embed, shard.vocab_shard_rows, 1);
  RETURN_IF_ERROR(ops.Fill(&padding, 0.0f));
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    LayerWeights lw;
    ASSIGN_OR_RETURN(lw.input_norm, make.Norm(d));
    ASSIGN_OR_RETURN(lw.post_attention_norm, make.Norm(d));
    RETURN_IF_ERROR(RandomAttention(c, shard, ops, make, &lw));
    lw.is_moe = c.is_moe_layer(layer);
    if (lw.is_moe) {
      RETURN_IF_ERROR(RandomMoe(c, shard, make, &lw));
    } else {
      ASSIGN_OR_RETURN(lw.mlp, make.Mlp(d, shard.dense_inner.size(), c.intermediate_size));
    }
    w.layers.push_back(std::move(lw));
  }
  ASSIGN_OR_RETURN(w.final_norm, make.Norm(d));
  ASSIGN_OR_RETURN(w.lm_head, make.Matrix({shard.vocab_shard_rows, d}, d));
  return w;
}

absl::StatusOr<ModelWeights> LoadModelWeights(const Checkpoint& checkpoint, const ModelConfig& config,
                                              const ShardLayout& shard, Ops& ops, WeightsDtype dtype,
                                              const LoadProgress& progress) {
  return Loader(checkpoint, config, shard, ops, dtype).LoadAll(progress);
}

absl::StatusOr<WeightsDtype> ParseWeightsDtype(std::string_view name) {
  if (name.empty() || name == "auto") return WeightsDtype::kAuto;
  if (name == "bf16") return WeightsDtype::kBf16;
  if (name == "fp8") return WeightsDtype::kFp8;
  return absl::InvalidArgumentError(absl::StrCat("weights dtype \"", std::string(name), "\": expected auto, bf16 or fp8"));
}

}  // namespace mlaserve
