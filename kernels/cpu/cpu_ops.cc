// The float32 reference backend. Loops are plain and parallelized with OpenMP
// over independent rows; every reduction accumulates in float32 (attention
// softmax sums in double) so it can serve as the oracle for the CUDA kernels.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/fp8_rows.h"
#include "kernels/latent_row.h"
#include "kernels/ops.h"
#include "kernels/random_normal.h"
#include "kernels/shape_check.h"

namespace mlaserve {
namespace {

float Dot(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

float Silu(float x) { return x / (1.0f + std::exp(-x)); }

// Softmax of scores[0, n) in place; returns the log of the sum of the
// scores' exponentials (the lse attention parts are combined by).
// REQUIRES: n > 0.
float SoftmaxInPlace(float* scores, int64_t n) {
  float max_score = *std::max_element(scores, scores + n);
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    sum += scores[j];
  }
  for (int64_t j = 0; j < n; ++j) scores[j] = static_cast<float>(scores[j] / sum);
  return max_score + static_cast<float>(std::log(sum));
}

// Row-wise y[t] = W x[t] over `rows` rows, parallel over (row, output) pairs.
void MatVecRows(const float* x, const float* w, float* y, int64_t rows, int64_t n, int64_t k) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t j = 0; j < n; ++j) y[t * n + j] = Dot(x + t * k, w + j * k, k);
  }
}

void RmsNormRow(const float* x, const float* w, float eps, int64_t d, float* out) {
  double sum_sq = 0.0;
  for (int64_t i = 0; i < d; ++i) sum_sq += double{x[i]} * x[i];
  float inv_rms = 1.0f / std::sqrt(static_cast<float>(sum_sq / d) + eps);
  for (int64_t i = 0; i < d; ++i) out[i] = w[i] * (x[i] * inv_rms);
}

// Picks the `k` largest of values[0, n) (ties to the lower index, as the
// reference implementations' topk does in practice).
std::vector<int64_t> TopK(const float* values, int64_t n, int64_t k) {
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t b) {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  });
  idx.resize(k);
  return idx;
}

// Group-limited selection mask: experts outside the best `topk_groups` groups
// get -inf. (transformers fills 0.0, DeepSeek's reference -inf; with -inf a
// masked expert can never outrank a kept one whose biased score is negative.)
void MaskGroups(const RouterConfig& config, const float* scores, int64_t num_experts, float* choice) {
  const int64_t group_size = num_experts / config.num_groups;
  std::vector<float> group_score(config.num_groups);
  for (int64_t g = 0; g < config.num_groups; ++g) {
    const float* in_group = (config.noaux_tc ? choice : scores) + g * group_size;
    if (config.noaux_tc) {
      std::vector<int64_t> best = TopK(in_group, group_size, std::min<int64_t>(2, group_size));
      group_score[g] = 0;
      for (int64_t e : best) group_score[g] += in_group[e];
    } else {
      group_score[g] = *std::max_element(in_group, in_group + group_size);
    }
  }
  std::vector<int64_t> kept = TopK(group_score.data(), config.num_groups, config.topk_groups);
  std::vector<bool> keep(config.num_groups, false);
  for (int64_t g : kept) keep[g] = true;
  for (int64_t e = 0; e < num_experts; ++e) {
    if (!keep[e / group_size]) choice[e] = -std::numeric_limits<float>::infinity();
  }
}

void RouteToken(const RouterConfig& config, const float* logits, const float* bias, int64_t num_experts,
                int32_t* ids, float* weights) {
  std::vector<float> scores(logits, logits + num_experts);
  if (config.sigmoid) {
    for (float& s : scores) s = 1.0f / (1.0f + std::exp(-s));
  } else {
    SoftmaxInPlace(scores.data(), num_experts);
  }
  std::vector<float> choice = scores;
  if (bias != nullptr) {
    for (int64_t e = 0; e < num_experts; ++e) choice[e] += bias[e];
  }
  if ((config.noaux_tc || config.group_limited) && config.num_groups > 1) {
    MaskGroups(config, scores.data(), num_experts, choice.data());
  }
  std::vector<int64_t> chosen = TopK(choice.data(), num_experts, config.top_k);
  float sum = 0.0f;
  for (int64_t k = 0; k < config.top_k; ++k) {
    ids[k] = static_cast<int32_t>(chosen[k]);
    weights[k] = scores[chosen[k]];
    sum += weights[k];
  }
  for (int64_t k = 0; k < config.top_k; ++k) {
    if (config.normalize) weights[k] /= sum + 1e-20f;
    weights[k] *= config.scaling;
  }
}

// y[t, j] = Fp8RowDot of x's row t and w's row j, both FP8 tensors (as
// QuantizeFp8 makes them) of rows of k values: x [rows, k], w [n, k].
void Fp8MatVecRows(const Tensor& x, const uint8_t* w, const float* w_scales, float* y, int64_t rows, int64_t n,
                   int64_t k) {
  const int64_t groups = Fp8Groups(k);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t j = 0; j < n; ++j) {
      y[t * n + j] = Fp8RowDot(x.as<uint8_t>() + t * k, x.scale->as<float>() + t * groups, w + j * k,
                               w_scales + j * groups, k);
    }
  }
}

class CpuOps final : public Ops {
 public:
  std::string_view name() const override { return "cpu"; }
  DType storage_dtype() const override { return DType::kF32; }

  absl::StatusOr<Tensor> Empty(DType dtype, std::vector<int64_t> shape) override {
    Tensor t;
    t.dtype = dtype;
    t.device = Device::kCpu;
    t.shape = std::move(shape);
    for (int64_t d : t.shape) {
      if (d < 0) return absl::InvalidArgumentError(absl::StrCat("negative extent in ", t.ShapeString()));
    }
    size_t bytes = std::max<size_t>(t.num_bytes(), 1);
    void* data = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (data == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes on the CPU"));
    }
    t.storage = std::shared_ptr<void>(data, std::free);
    t.data = data;
    return t;
  }

  absl::Status Upload(absl::Span<const float> src, Tensor* dst) override {
    if (static_cast<int64_t>(src.size()) != dst->numel()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Upload: ", src.size(), " values into a tensor of ", dst->numel()));
    }
    if (dst->dtype == DType::kI32) {
      std::transform(src.begin(), src.end(), dst->as<int32_t>(), [](float v) { return static_cast<int32_t>(v); });
      return absl::OkStatus();
    }
    if (dst->dtype == DType::kU8) {  // an FP8 latent cache's bytes (kernels/latent_row.h)
      std::transform(src.begin(), src.end(), dst->as<uint8_t>(), [](float v) { return static_cast<uint8_t>(v); });
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(CheckDType("Upload", "dst", *dst, DType::kF32));
    std::memcpy(dst->data, src.data(), src.size() * sizeof(float));
    return absl::OkStatus();
  }

  absl::Status Download(const Tensor& src, absl::Span<float> dst) override {
    if (static_cast<int64_t>(dst.size()) != src.numel()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Download: tensor of ", src.numel(), " values into ", dst.size()));
    }
    ConvertToF32(src.dtype, src.data, dst.size(), dst.data());
    return absl::OkStatus();
  }

  absl::Status UploadBytes(const void* src, size_t num_bytes, Tensor* dst) override {
    if (num_bytes != dst->num_bytes()) {
      return absl::InvalidArgumentError(
          absl::StrCat("UploadBytes: ", num_bytes, " bytes into a tensor of ", dst->num_bytes()));
    }
    if (num_bytes > 0) std::memcpy(dst->data, src, num_bytes);
    return absl::OkStatus();
  }

  absl::StatusOr<Tensor> QuantizeFp8(const Tensor& w) override {
    RETURN_IF_ERROR(CheckDType("QuantizeFp8", "w", w, DType::kF32));
    if (w.rank() == 0) return absl::InvalidArgumentError("QuantizeFp8: a scalar has no rows");
    const int64_t k = w.dim(-1), rows = k == 0 ? 0 : w.numel() / k;
    ASSIGN_OR_RETURN(Tensor q, Empty(DType::kF8E4M3, w.shape));
    std::vector<int64_t> scale_shape = w.shape;
    scale_shape.back() = Fp8Groups(k);
    ASSIGN_OR_RETURN(Tensor scale, Empty(DType::kF32, std::move(scale_shape)));
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      QuantizeFp8Row(w.as<float>() + r * k, k, q.as<uint8_t>() + r * k, scale.as<float>() + r * Fp8Groups(k));
    }
    q.scale = std::make_shared<Tensor>(std::move(scale));
    RETURN_IF_ERROR(CheckFp8Weight("QuantizeFp8", "w", q));
    return q;
  }

  absl::Status Fill(Tensor* dst, float value) override {
    RETURN_IF_ERROR(CheckDType("Fill", "dst", *dst, DType::kF32));
    std::fill_n(dst->as<float>(), dst->numel(), value);
    return absl::OkStatus();
  }

  absl::Status FillRandom(Tensor* dst, uint64_t seed, float mean, float stddev) override {
    RETURN_IF_ERROR(CheckDType("FillRandom", "dst", *dst, DType::kF32));
    float* out = dst->as<float>();
    const int64_t n = dst->numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) out[i] = mean + stddev * RandomNormal(seed, static_cast<uint64_t>(i));
    return absl::OkStatus();
  }

  absl::Status Synchronize() override { return absl::OkStatus(); }

  absl::Status Embedding(const Tensor& table, absl::Span<const int32_t> ids, Tensor* out) override {
    const int64_t vocab = table.dim(0), d = table.dim(1);
    RETURN_IF_ERROR(CheckShape("Embedding", "out", *out, {static_cast<int64_t>(ids.size()), d}));
    for (size_t t = 0; t < ids.size(); ++t) {
      if (ids[t] < 0 || ids[t] >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", ids[t], " outside the vocabulary [0, ", vocab, ")"));
      }
      std::memcpy(out->as<float>() + t * d, table.as<float>() + ids[t] * d, d * sizeof(float));
    }
    return absl::OkStatus();
  }

  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor* out) override {
    const int64_t d = weight.dim(0), rows = x.numel() / d;
    RETURN_IF_ERROR(CheckShape("RmsNorm", "x", x, {rows, d}));
    RETURN_IF_ERROR(CheckShape("RmsNorm", "out", *out, {rows, d}));
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < rows; ++t) {
      RmsNormRow(x.as<float>() + t * d, weight.as<float>(), eps, d, out->as<float>() + t * d);
    }
    return absl::OkStatus();
  }

  absl::Status AddRmsNorm(Tensor* residual, const Tensor& x, const Tensor& weight, float eps,
                          Tensor* out) override {
    RETURN_IF_ERROR(Add(residual, x));
    return RmsNorm(*residual, weight, eps, out);
  }

  absl::Status Linear(const Tensor& x, const Tensor& w, Tensor* out) override {
    const int64_t n = w.dim(0), k = w.dim(1), rows = x.dim(0);
    RETURN_IF_ERROR(CheckShape("Linear", "x", x, {rows, k}));
    RETURN_IF_ERROR(CheckShape("Linear", "out", *out, {rows, n}));
    if (w.dtype == DType::kF8E4M3) {
      RETURN_IF_ERROR(CheckFp8Weight("Linear", "w", w));
      ASSIGN_OR_RETURN(const Tensor x_q, QuantizeFp8(x));
      Fp8MatVecRows(x_q, w.as<uint8_t>(), w.scale->as<float>(), out->as<float>(), rows, n, k);
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(CheckDType("Linear", "w", w, DType::kF32));
    MatVecRows(x.as<float>(), w.as<float>(), out->as<float>(), rows, n, k);
    return absl::OkStatus();
  }

  absl::Status HeadLinear(const Tensor& x, const Tensor& w, Tensor* out) override {
    const int64_t heads = w.dim(0), n = w.dim(1), k = w.dim(2), rows = x.dim(0);
    RETURN_IF_ERROR(CheckShape("HeadLinear", "x", x, {rows, heads, k}));
    RETURN_IF_ERROR(CheckShape("HeadLinear", "out", *out, {rows, heads, n}));
    const float* xs = x.as<float>();
    const float* ws = w.as<float>();
    float* ys = out->as<float>();
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t j = 0; j < n; ++j) {
          ys[(t * heads + h) * n + j] = Dot(xs + (t * heads + h) * k, ws + (h * n + j) * k, k);
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status Rope(Tensor* x, absl::Span<const int32_t> positions, const RopeTable& table) override {
    const int64_t rows = positions.size(), dim = table.rope_dim, half = dim / 2;
    RETURN_IF_ERROR(CheckShape("Rope", "x", *x, {rows, -1, dim}));
    const int64_t heads = x->dim(1);
    float* xs = x->as<float>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        // float32 angle as transformers computes it; cos/sin scaled by YaRN's factor.
        float angle = static_cast<float>(positions[t]) * table.inv_freq[i];
        float c = std::cos(angle) * table.attention_factor;
        float s = std::sin(angle) * table.attention_factor;
        for (int64_t h = 0; h < heads; ++h) {
          float* v = xs + (t * heads + h) * dim;
          float* a = table.interleaved ? v + 2 * i : v + i;
          float* b = table.interleaved ? v + 2 * i + 1 : v + i + half;
          float a0 = *a, b0 = *b;
          *a = a0 * c - b0 * s;
          *b = b0 * c + a0 * s;
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status Add(Tensor* a, const Tensor& b) override {
    if (a->numel() != b.numel()) {
      return absl::InvalidArgumentError(absl::StrCat("Add: ", a->ShapeString(), " + ", b.ShapeString()));
    }
    float* as = a->as<float>();
    const float* bs = b.as<float>();
    const int64_t n = a->numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) as[i] += bs[i];
    return absl::OkStatus();
  }

  absl::Status AddRows(const Tensor& src, absl::Span<const int32_t> rows, Tensor* dst) override {
    const int64_t n = static_cast<int64_t>(rows.size()), d = dst->dim(1);
    RETURN_IF_ERROR(CheckShape("AddRows", "src", src, {n, d}));
    for (int64_t i = 0; i < n; ++i) {
      if (rows[i] < 0 || rows[i] >= dst->dim(0)) {
        return absl::InvalidArgumentError(absl::StrCat("AddRows: row ", rows[i], " outside [0, ", dst->dim(0), ")"));
      }
      const float* s = src.as<float>() + i * d;
      float* t = dst->as<float>() + rows[i] * d;
      for (int64_t j = 0; j < d; ++j) t[j] += s[j];
    }
    return absl::OkStatus();
  }

  absl::Status SiluMul(const Tensor& x, Tensor* out) override {
    const int64_t rows = x.dim(0), inner = x.dim(1) / 2;
    RETURN_IF_ERROR(CheckShape("SiluMul", "x", x, {rows, 2 * inner}));
    RETURN_IF_ERROR(CheckShape("SiluMul", "out", *out, {rows, inner}));
    const float* xs = x.as<float>();
    float* ys = out->as<float>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t i = 0; i < inner; ++i) {
        ys[t * inner + i] = Silu(xs[t * 2 * inner + i]) * xs[t * 2 * inner + inner + i];
      }
    }
    return absl::OkStatus();
  }

  absl::Status WriteLatentCache(const Tensor& c_kv, const Tensor& k_rope, absl::Span<const int64_t> slots,
                                int64_t layer, Tensor* cache) override {
    const int64_t rows = slots.size(), rank = c_kv.dim(1), rope = k_rope.dim(1);
    RETURN_IF_ERROR(CheckShape("WriteLatentCache", "c_kv", c_kv, {rows, rank}));
    RETURN_IF_ERROR(CheckShape("WriteLatentCache", "k_rope", k_rope, {rows, rope}));
    RETURN_IF_ERROR(CheckShape("WriteLatentCache", "cache", *cache, {-1, -1, -1, LatentRowWidth(*cache, rank, rope)}));
    const int64_t block_size = cache->dim(2), num_slots = cache->dim(0) * block_size;
    const Fp8LatentRow fp8{rank, rope};
    std::vector<float> scales(Fp8Groups(rank));
    for (int64_t t = 0; t < rows; ++t) {
      if (slots[t] == kSlotElsewhere) continue;
      if (slots[t] < 0 || slots[t] >= num_slots) {
        return absl::OutOfRangeError(absl::StrCat("cache slot ", slots[t], " outside [0, ", num_slots, ")"));
      }
      uint8_t* row = CacheRow(*cache, layer, slots[t] / block_size, slots[t] % block_size);
      const float* c = c_kv.as<float>() + t * rank;
      const float* r = k_rope.as<float>() + t * rope;
      if (!IsFp8LatentCache(*cache)) {
        std::memcpy(row, c, rank * sizeof(float));
        std::memcpy(row + rank * sizeof(float), r, rope * sizeof(float));
        continue;
      }
      QuantizeFp8Row(c, rank, row, scales.data());
      std::memcpy(row + fp8.scales_offset(), scales.data(), scales.size() * sizeof(float));
      for (int64_t i = 0; i < rope; ++i) {
        const uint16_t bits = F32ToBf16(r[i]);
        std::memcpy(row + fp8.rope_offset() + 2 * i, &bits, 2);
      }
    }
    return absl::OkStatus();
  }

  absl::Status GatherLatent(const Tensor& cache, int64_t layer, absl::Span<const int32_t> block_table,
                            int64_t num_positions, Tensor* c_kv, Tensor* k_rope) override {
    const int64_t block_size = cache.dim(2), rank = c_kv->dim(1), rope = k_rope->dim(1);
    RETURN_IF_ERROR(CheckShape("GatherLatent", "cache", cache, {-1, -1, block_size, LatentRowWidth(cache, rank, rope)}));
    RETURN_IF_ERROR(CheckShape("GatherLatent", "c_kv", *c_kv, {num_positions, rank}));
    RETURN_IF_ERROR(CheckShape("GatherLatent", "k_rope", *k_rope, {num_positions, rope}));
    SequenceSlice seq{.num_tokens = 0, .context_len = num_positions,
                      .block_table = {block_table.begin(), block_table.end()}};
    RETURN_IF_ERROR(CheckBlockTable(seq, block_size, cache.dim(0)));
    for (int64_t p = 0; p < num_positions; ++p) {
      ReadLatentRow(cache, CacheRow(cache, layer, block_table[p / block_size], p % block_size), rank, rope,
                    c_kv->as<float>() + p * rank, k_rope->as<float>() + p * rope);
    }
    return absl::OkStatus();
  }

  absl::Status MlaAbsorbedAttention(const Tensor& q_latent, const Tensor& q_rope, const Tensor& cache,
                                    int64_t layer, const AttentionLayout& layout, float softmax_scale,
                                    Tensor* out) override {
    return AbsorbedAttention("MlaAbsorbedAttention", q_latent, q_rope, cache, layer, layout, softmax_scale, out,
                             nullptr);
  }

  absl::Status MlaAbsorbedAttentionPart(const Tensor& q_latent, const Tensor& q_rope, const Tensor& cache,
                                        int64_t layer, const AttentionLayout& layout, float softmax_scale, Tensor* out,
                                        Tensor* lse) override {
    RETURN_IF_ERROR(CheckShape("MlaAbsorbedAttentionPart", "lse", *lse, {q_latent.dim(0), q_latent.dim(1)}));
    if (lse->dtype != DType::kF32) return absl::InvalidArgumentError("MlaAbsorbedAttentionPart: lse must be F32");
    return AbsorbedAttention("MlaAbsorbedAttentionPart", q_latent, q_rope, cache, layer, layout, softmax_scale, out,
                             lse);
  }

  bool AttendsInParts() const override { return true; }

  absl::Status CombineAttentionParts(const Tensor& parts, const Tensor& lse, Tensor* out) override {
    constexpr absl::string_view kOp = "CombineAttentionParts";
    const int64_t num_parts = parts.dim(0), rows = parts.dim(1), heads = parts.dim(2), dim = parts.dim(3);
    RETURN_IF_ERROR(CheckShape(kOp, "lse", lse, {num_parts, rows, heads}));
    RETURN_IF_ERROR(CheckShape(kOp, "out", *out, {rows, heads, dim}));
    if (lse.dtype != DType::kF32) return absl::InvalidArgumentError("CombineAttentionParts: lse must be F32");
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        float max_lse = -std::numeric_limits<float>::infinity();
        for (int64_t p = 0; p < num_parts; ++p) max_lse = std::max(max_lse, lse.as<float>()[(p * rows + t) * heads + h]);
        float* o = out->as<float>() + (t * heads + h) * dim;
        std::fill_n(o, dim, 0.0f);
        if (max_lse == -std::numeric_limits<float>::infinity()) continue;  // no part saw a key
        std::vector<double> weights(num_parts);
        double total = 0.0;
        for (int64_t p = 0; p < num_parts; ++p) {
          total += weights[p] = std::exp(lse.as<float>()[(p * rows + t) * heads + h] - max_lse);
        }
        for (int64_t p = 0; p < num_parts; ++p) {
          const float w = static_cast<float>(weights[p] / total);
          const float* part = parts.as<float>() + ((p * rows + t) * heads + h) * dim;
          for (int64_t d = 0; d < dim; ++d) o[d] += w * part[d];
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status MlaExpandedAttention(const Tensor& q_nope, const Tensor& q_rope, const Tensor& k_nope,
                                    const Tensor& k_rope, const Tensor& v, int64_t first_head, float softmax_scale,
                                    Tensor* out) override {
    constexpr absl::string_view kOp = "MlaExpandedAttention";
    const int64_t rows = q_nope.dim(0), q_heads = q_nope.dim(1), nope = q_nope.dim(2), rope = q_rope.dim(2);
    const int64_t keys = k_nope.dim(0), heads = k_nope.dim(1), dv = v.dim(2);
    RETURN_IF_ERROR(CheckShape(kOp, "q_rope", q_rope, {rows, q_heads, rope}));
    RETURN_IF_ERROR(CheckShape(kOp, "k_nope", k_nope, {keys, heads, nope}));
    RETURN_IF_ERROR(CheckShape(kOp, "k_rope", k_rope, {keys, rope}));
    RETURN_IF_ERROR(CheckShape(kOp, "v", v, {keys, heads, dv}));
    RETURN_IF_ERROR(CheckShape(kOp, "out", *out, {rows, q_heads, dv}));
    if (rows > keys) return absl::InvalidArgumentError("MlaExpandedAttention: more queries than keys");
    if (first_head < 0 || first_head + heads > q_heads) {
      return absl::InvalidArgumentError(absl::StrCat("MlaExpandedAttention: heads [", first_head, ", ",
                                                     first_head + heads, ") outside the queries' ", q_heads));
    }
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t num_keys = keys - rows + t + 1, q_row = t * q_heads + first_head + h;
        const float* qn = q_nope.as<float>() + q_row * nope;
        const float* qr = q_rope.as<float>() + q_row * rope;
        std::vector<float> scores(num_keys);
        for (int64_t j = 0; j < num_keys; ++j) {
          scores[j] = (Dot(qn, k_nope.as<float>() + (j * heads + h) * nope, nope) +
                       Dot(qr, k_rope.as<float>() + j * rope, rope)) *
                      softmax_scale;
        }
        SoftmaxInPlace(scores.data(), num_keys);
        float* o = out->as<float>() + q_row * dv;
        std::fill_n(o, dv, 0.0f);
        for (int64_t j = 0; j < num_keys; ++j) {
          const float* vj = v.as<float>() + (j * heads + h) * dv;
          for (int64_t r = 0; r < dv; ++r) o[r] += scores[j] * vj[r];
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status MoeRoute(const Tensor& logits, const Tensor* bias, const RouterConfig& config, Tensor* topk_ids,
                        Tensor* topk_weights) override {
    const int64_t rows = logits.dim(0), experts = logits.dim(1);
    if (config.top_k > experts || experts % config.num_groups != 0 || config.topk_groups > config.num_groups) {
      return absl::InvalidArgumentError("MoeRoute: inconsistent router configuration");
    }
    RETURN_IF_ERROR(CheckShape("MoeRoute", "topk_ids", *topk_ids, {rows, config.top_k}));
    RETURN_IF_ERROR(CheckDType("MoeRoute", "topk_ids", *topk_ids, DType::kI32));
    RETURN_IF_ERROR(CheckShape("MoeRoute", "topk_weights", *topk_weights, {rows, config.top_k}));
    if (bias != nullptr) RETURN_IF_ERROR(CheckShape("MoeRoute", "bias", *bias, {experts}));
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < rows; ++t) {
      RouteToken(config, logits.as<float>() + t * experts, bias ? bias->as<float>() : nullptr, experts,
                 topk_ids->as<int32_t>() + t * config.top_k, topk_weights->as<float>() + t * config.top_k);
    }
    return absl::OkStatus();
  }

  absl::Status MoeExperts(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                          const Tensor& gate_up, const Tensor& down, int64_t first_expert, Tensor* out) override {
    const int64_t rows = x.dim(0), d = x.dim(1), top_k = topk_ids.dim(1);
    const int64_t local_experts = gate_up.dim(0), inner = gate_up.dim(1) / 2;
    RETURN_IF_ERROR(CheckShape("MoeExperts", "gate_up", gate_up, {local_experts, 2 * inner, d}));
    RETURN_IF_ERROR(CheckShape("MoeExperts", "down", down, {local_experts, d, inner}));
    RETURN_IF_ERROR(CheckShape("MoeExperts", "topk_weights", topk_weights, {rows, top_k}));
    RETURN_IF_ERROR(CheckShape("MoeExperts", "out", *out, {rows, d}));
    const bool fp8 = gate_up.dtype == DType::kF8E4M3;
    if (fp8) {
      RETURN_IF_ERROR(CheckFp8Weight("MoeExperts", "gate_up", gate_up));
      RETURN_IF_ERROR(CheckFp8Weight("MoeExperts", "down", down));
    } else {
      RETURN_IF_ERROR(CheckDType("MoeExperts", "gate_up", gate_up, DType::kF32));
      RETURN_IF_ERROR(CheckDType("MoeExperts", "down", down, DType::kF32));
    }
    Tensor x_q;
    if (fp8) {
      ASSIGN_OR_RETURN(x_q, QuantizeFp8(x));
    }
#pragma omp parallel for schedule(dynamic)
    for (int64_t t = 0; t < rows; ++t) {
      std::vector<float> hidden(2 * inner), act(inner), expert_out(d);
      float* y = out->as<float>() + t * d;
      std::fill_n(y, d, 0.0f);
      for (int64_t k = 0; k < top_k; ++k) {
        const int64_t e = topk_ids.as<int32_t>()[t * top_k + k] - first_expert;
        if (e < 0 || e >= local_experts) continue;
        const float weight = topk_weights.as<float>()[t * top_k + k];
        if (fp8) {
          ExpertFp8(x_q.as<uint8_t>() + t * d, x_q.scale->as<float>() + t * Fp8Groups(d), gate_up, down, e, inner, d,
                    hidden.data(), act.data(), expert_out.data());
        } else {
          MatVecRows(x.as<float>() + t * d, gate_up.as<float>() + e * 2 * inner * d, hidden.data(), 1, 2 * inner, d);
          for (int64_t i = 0; i < inner; ++i) act[i] = Silu(hidden[i]) * hidden[inner + i];
          const float* w_down = down.as<float>() + e * d * inner;
          for (int64_t j = 0; j < d; ++j) expert_out[j] = Dot(act.data(), w_down + j * inner, inner);
        }
        for (int64_t j = 0; j < d; ++j) y[j] += weight * expert_out[j];
      }
    }
    return absl::OkStatus();
  }

  absl::Status SampleTokens(const Tensor& logits, int64_t vocab, absl::Span<const SamplerParams> params,
                            absl::Span<const int64_t> sample_indices, absl::Span<int32_t> tokens) override {
    RETURN_IF_ERROR(CheckSampleArgs(logits, vocab, params.size(), sample_indices.size(), tokens.size()));
    RETURN_IF_ERROR(CheckDType("SampleTokens", "logits", logits, DType::kF32));
    const int64_t rows = logits.dim(1);
    const std::vector<float> unsharded =
        UnshardLogits(absl::MakeConstSpan(logits.as<float>(), logits.numel()), logits.dim(0), rows, logits.dim(2), vocab);
    for (int64_t r = 0; r < rows; ++r) {
      tokens[r] = SampleToken(absl::MakeConstSpan(unsharded).subspan(r * vocab, vocab), params[r], sample_indices[r]);
    }
    return absl::OkStatus();
  }

 private:
  // Expert e of FP8 gate_up/down on one quantized row x_q, x_scales: out[d].
  static void ExpertFp8(const uint8_t* x_q, const float* x_scales, const Tensor& gate_up, const Tensor& down, int64_t e, int64_t inner,
                        int64_t d, float* hidden, float* act, float* out) {
    const uint8_t* gu = gate_up.as<uint8_t>() + e * 2 * inner * d;
    const float* gu_scales = gate_up.scale->as<float>() + e * 2 * inner * Fp8Groups(d);
    for (int64_t j = 0; j < 2 * inner; ++j) {
      hidden[j] = Fp8RowDot(x_q, x_scales, gu + j * d, gu_scales + j * Fp8Groups(d), d);
    }
    for (int64_t i = 0; i < inner; ++i) act[i] = Silu(hidden[i]) * hidden[inner + i];
    std::vector<uint8_t> act_q(inner);
    std::vector<float> act_scales(Fp8Groups(inner));
    QuantizeFp8Row(act, inner, act_q.data(), act_scales.data());
    const uint8_t* dn = down.as<uint8_t>() + e * d * inner;
    const float* dn_scales = down.scale->as<float>() + e * d * Fp8Groups(inner);
    for (int64_t j = 0; j < d; ++j) {
      out[j] = Fp8RowDot(act_q.data(), act_scales.data(), dn + j * inner, dn_scales + j * Fp8Groups(inner), inner);
    }
  }

  static uint8_t* CacheRow(const Tensor& cache, int64_t layer, int64_t block, int64_t offset) {
    const int64_t layers = cache.dim(1), block_size = cache.dim(2), width = cache.dim(3);
    return static_cast<uint8_t*>(cache.data) +
           ((block * layers + layer) * block_size + offset) * width * static_cast<int64_t>(DTypeBytes(cache.dtype));
  }

  // One cache row's c_kv and k_rope in float32 (an FP8 row dequantized).
  static void ReadLatentRow(const Tensor& cache, const uint8_t* row, int64_t rank, int64_t rope, float* c_kv,
                            float* k_rope) {
    if (!IsFp8LatentCache(cache)) {
      std::memcpy(c_kv, row, rank * sizeof(float));
      std::memcpy(k_rope, row + rank * sizeof(float), rope * sizeof(float));
      return;
    }
    const Fp8LatentRow fp8{rank, rope};
    const float* scales = reinterpret_cast<const float*>(row + fp8.scales_offset());
    for (int64_t i = 0; i < rank; ++i) c_kv[i] = F8E4M3ToF32(row[i]) * scales[i / kFp8ScaleGroup];
    for (int64_t i = 0; i < rope; ++i) {
      uint16_t bits;
      std::memcpy(&bits, row + fp8.rope_offset() + 2 * i, 2);
      k_rope[i] = Bf16ToF32(bits);
    }
  }

  // MlaAbsorbedAttention, or with `lse` its part over the keys of the
  // blocks held here (table entries >= 0; the others are held by another
  // rank): lse[t, h] the log of the sum of exp(score) over those keys, -inf
  // (and out zero) when there are none.
  static absl::Status AbsorbedAttention(absl::string_view op, const Tensor& q_latent, const Tensor& q_rope,
                                        const Tensor& cache, int64_t layer, const AttentionLayout& layout,
                                        float softmax_scale, Tensor* out, Tensor* lse) {
    const int64_t rows = q_latent.dim(0), heads = q_latent.dim(1), rank = q_latent.dim(2);
    const int64_t rope = q_rope.dim(2), dims = rank + rope;
    RETURN_IF_ERROR(CheckShape(op, "q_latent", q_latent, {rows, heads, rank}));
    RETURN_IF_ERROR(CheckShape(op, "q_rope", q_rope, {rows, heads, rope}));
    RETURN_IF_ERROR(CheckShape(op, "cache", cache, {-1, -1, layout.block_size, LatentRowWidth(cache, rank, rope)}));
    RETURN_IF_ERROR(CheckShape(op, "out", *out, {rows, heads, rank}));
    const bool part = lse != nullptr;
    for (const SequenceSlice& seq : layout.seqs) {
      RETURN_IF_ERROR(CheckBlockTable(seq, layout.block_size, cache.dim(0), /*elsewhere_allowed=*/part));
      if (seq.token_begin < 0 || seq.num_tokens < 0 || seq.token_begin + seq.num_tokens > rows) {
        return absl::InvalidArgumentError(absl::StrCat(op, ": a sequence's rows [", seq.token_begin, ", ",
                                                       seq.token_begin + seq.num_tokens, ") outside ", rows));
      }
      const std::vector<float> keys = ReadLatentRows(cache, layer, seq, layout.block_size, rank, rope);
      // The positions of the keys held here, ascending: a query sees those
      // before its own position.
      std::vector<int64_t> held;
      for (int64_t j = 0; j < seq.context_len; ++j) {
        if (seq.block_table[j / layout.block_size] >= 0) held.push_back(j);
      }
#pragma omp parallel for collapse(2) schedule(dynamic)
      for (int64_t i = 0; i < seq.num_tokens; ++i) {
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t t = seq.token_begin + i;
          const int64_t num_keys = seq.context_len - seq.num_tokens + i + 1;
          const int64_t seen = std::lower_bound(held.begin(), held.end(), num_keys) - held.begin();
          const float* ql = q_latent.as<float>() + (t * heads + h) * rank;
          const float* qr = q_rope.as<float>() + (t * heads + h) * rope;
          std::vector<float> scores(seen);
          for (int64_t k = 0; k < seen; ++k) {
            const float* kv = keys.data() + held[k] * dims;
            scores[k] = (Dot(ql, kv, rank) + Dot(qr, kv + rank, rope)) * softmax_scale;
          }
          float* o = out->as<float>() + (t * heads + h) * rank;
          std::fill_n(o, rank, 0.0f);
          if (seen == 0) {  // only a part's query can see no key
            lse->as<float>()[t * heads + h] = -std::numeric_limits<float>::infinity();
            continue;
          }
          const float log_sum_exp = SoftmaxInPlace(scores.data(), seen);
          if (part) lse->as<float>()[t * heads + h] = log_sum_exp;
          for (int64_t k = 0; k < seen; ++k) {
            const float* kv = keys.data() + held[k] * dims;
            for (int64_t r = 0; r < rank; ++r) o[r] += scores[k] * kv[r];
          }
        }
      }
    }
    return absl::OkStatus();
  }

  // The first context_len rows of `seq` in `layer`, c_kv ++ k_rope in float32
  // (rows of blocks held elsewhere left unread).
  static std::vector<float> ReadLatentRows(const Tensor& cache, int64_t layer, const SequenceSlice& seq,
                                           int64_t block_size, int64_t rank, int64_t rope) {
    const int64_t dims = rank + rope;
    std::vector<float> rows(seq.context_len * dims);
    for (int64_t j = 0; j < seq.context_len; ++j) {
      if (seq.block_table[j / block_size] < 0) continue;  // held by another rank: never read
      float* dst = rows.data() + j * dims;
      ReadLatentRow(cache, CacheRow(cache, layer, seq.block_table[j / block_size], j % block_size), rank, rope, dst,
                    dst + rank);
    }
    return rows;
  }

  // With `elsewhere_allowed`, negative entries (blocks another rank holds) pass.
  static absl::Status CheckBlockTable(const SequenceSlice& seq, int64_t block_size, int64_t num_blocks,
                                      bool elsewhere_allowed = false) {
    const int64_t needed = (seq.context_len + block_size - 1) / block_size;
    if (static_cast<int64_t>(seq.block_table.size()) < needed || seq.num_tokens > seq.context_len) {
      return absl::InvalidArgumentError(absl::StrCat("sequence of ", seq.context_len, " positions has ",
                                                     seq.block_table.size(), " blocks of ", block_size));
    }
    for (int64_t b = 0; b < needed; ++b) {
      if (elsewhere_allowed && seq.block_table[b] < 0) continue;
      if (seq.block_table[b] < 0 || seq.block_table[b] >= num_blocks) {
        return absl::OutOfRangeError(absl::StrCat("block ", seq.block_table[b], " outside the pool of ", num_blocks));
      }
    }
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<Ops> NewCpuOps() { return std::make_unique<CpuOps>(); }

}  // namespace mlaserve
