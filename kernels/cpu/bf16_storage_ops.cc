#include "kernels/cpu/bf16_storage_ops.h"

#include <utility>
#include <vector>

#include "common/dtype.h"
#include "common/status_macros.h"

namespace mlaserve {
namespace {

// Delegates every op to the float32 CPU backend and rounds what it stores.
class Bf16StorageCpuOps final : public Ops {
 public:
  std::string_view name() const override { return "cpu-bf16-storage"; }
  DType storage_dtype() const override { return DType::kF32; }
  absl::StatusOr<Tensor> Empty(DType dtype, std::vector<int64_t> shape) override {
    return cpu_->Empty(dtype, std::move(shape));
  }
  absl::Status Upload(absl::Span<const float> src, Tensor* dst) override {
    return Rounded(cpu_->Upload(src, dst), *dst);
  }
  absl::Status Download(const Tensor& src, absl::Span<float> dst) override { return cpu_->Download(src, dst); }
  absl::Status Fill(Tensor* dst, float value) override { return Rounded(cpu_->Fill(dst, value), *dst); }
  absl::Status UploadBytes(const void* src, size_t num_bytes, Tensor* dst) override {
    return cpu_->UploadBytes(src, num_bytes, dst);
  }
  absl::StatusOr<Tensor> QuantizeFp8(const Tensor& w) override { return cpu_->QuantizeFp8(w); }
  absl::Status FillRandom(Tensor* dst, uint64_t seed, float mean, float stddev) override {
    return Rounded(cpu_->FillRandom(dst, seed, mean, stddev), *dst);
  }
  absl::Status Synchronize() override { return absl::OkStatus(); }
  absl::Status Embedding(const Tensor& table, absl::Span<const int32_t> ids, Tensor* out) override {
    return cpu_->Embedding(table, ids, out);
  }
  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor* out) override {
    return Rounded(cpu_->RmsNorm(x, weight, eps, out), *out);
  }
  absl::Status AddRmsNorm(Tensor* residual, const Tensor& x, const Tensor& weight, float eps,
                          Tensor* out) override {
    RETURN_IF_ERROR(Rounded(cpu_->Add(residual, x), *residual));
    return Rounded(cpu_->RmsNorm(*residual, weight, eps, out), *out);
  }
  absl::Status Linear(const Tensor& x, const Tensor& w, Tensor* out) override {
    return Rounded(cpu_->Linear(x, w, out), *out);
  }
  absl::Status HeadLinear(const Tensor& x, const Tensor& w, Tensor* out) override {
    return Rounded(cpu_->HeadLinear(x, w, out), *out);
  }
  absl::Status Rope(Tensor* x, absl::Span<const int32_t> positions, const RopeTable& table) override {
    return Rounded(cpu_->Rope(x, positions, table), *x);
  }
  absl::Status Add(Tensor* a, const Tensor& b) override { return Rounded(cpu_->Add(a, b), *a); }
  absl::Status AddRows(const Tensor& src, absl::Span<const int32_t> rows, Tensor* dst) override {
    return Rounded(cpu_->AddRows(src, rows, dst), *dst);
  }
  absl::Status SiluMul(const Tensor& x, Tensor* out) override { return Rounded(cpu_->SiluMul(x, out), *out); }
  absl::Status WriteLatentCache(const Tensor& c_kv, const Tensor& k_rope, absl::Span<const int64_t> slots,
                                int64_t layer, Tensor* cache) override {
    return cpu_->WriteLatentCache(c_kv, k_rope, slots, layer, cache);
  }
  absl::Status GatherLatent(const Tensor& cache, int64_t layer, absl::Span<const int32_t> block_table,
                            int64_t num_positions, Tensor* c_kv, Tensor* k_rope) override {
    return cpu_->GatherLatent(cache, layer, block_table, num_positions, c_kv, k_rope);
  }
  absl::Status MlaAbsorbedAttention(const Tensor& q_latent, const Tensor& q_rope, const Tensor& cache, int64_t layer,
                                    const AttentionLayout& layout, float softmax_scale, Tensor* out) override {
    return Rounded(cpu_->MlaAbsorbedAttention(q_latent, q_rope, cache, layer, layout, softmax_scale, out), *out);
  }
  absl::Status MlaAbsorbedAttentionPart(const Tensor& q_latent, const Tensor& q_rope, const Tensor& cache,
                                        int64_t layer, const AttentionLayout& layout, float softmax_scale, Tensor* out,
                                        Tensor* lse) override {
    return Rounded(cpu_->MlaAbsorbedAttentionPart(q_latent, q_rope, cache, layer, layout, softmax_scale, out, lse),
                   *out);
  }
  absl::Status CombineAttentionParts(const Tensor& parts, const Tensor& lse, Tensor* out) override {
    return Rounded(cpu_->CombineAttentionParts(parts, lse, out), *out);
  }
  bool AttendsInParts() const override { return true; }
  absl::Status MlaExpandedAttention(const Tensor& q_nope, const Tensor& q_rope, const Tensor& k_nope,
                                    const Tensor& k_rope, const Tensor& v, int64_t first_head, float softmax_scale,
                                    Tensor* out) override {
    return Rounded(cpu_->MlaExpandedAttention(q_nope, q_rope, k_nope, k_rope, v, first_head, softmax_scale, out),
                   *out);
  }
  absl::Status MoeRoute(const Tensor& logits, const Tensor* bias, const RouterConfig& config, Tensor* topk_ids,
                        Tensor* topk_weights) override {
    return cpu_->MoeRoute(logits, bias, config, topk_ids, topk_weights);
  }
  absl::Status MoeExperts(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                          const Tensor& gate_up, const Tensor& down, int64_t first_expert, Tensor* out) override {
    return Rounded(cpu_->MoeExperts(x, topk_ids, topk_weights, gate_up, down, first_expert, out), *out);
  }
  absl::Status SampleTokens(const Tensor& logits, int64_t vocab, absl::Span<const SamplerParams> params,
                            absl::Span<const int64_t> sample_indices, absl::Span<int32_t> tokens) override {
    return cpu_->SampleTokens(logits, vocab, params, sample_indices, tokens);
  }

 private:
  static absl::Status Rounded(absl::Status status, const Tensor& t) {
    if (status.ok() && t.dtype == DType::kF32) {
      float* p = t.as<float>();
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = Bf16ToF32(F32ToBf16(p[i]));
    }
    return status;
  }
  std::unique_ptr<Ops> cpu_ = NewCpuOps();
};

}  // namespace

std::unique_ptr<Ops> NewBf16StorageCpuOps() { return std::make_unique<Bf16StorageCpuOps>(); }

}  // namespace mlaserve
