#include "worker/attention_form.h"

#include <algorithm>

namespace mlaserve {
namespace {

// Rates on an H100 (docs/perf.md, 2026-12-07, mla_prefill_bench), FLOP/s:
// the absorbed kernel over prompt chunks, the expanded kernel when its launch
// fills the GPU, and the bf16 GEMMs that absorb the queries and outputs or
// expand K and V. Only their ratios matter.
constexpr double kAbsorbedPairRate = 2.55e14;
constexpr double kExpandedPairRate = 2.25e14;
constexpr double kGemmRate = 6.2e14;
// The expanded kernel's CTA (kernels/cuda/mla/traits.h) and an H100's or
// H200's SMs: fewer CTAs than SMs leave the rest idle.
constexpr int64_t kExpandedQueriesPerCta = 128;
constexpr int64_t kSms = 132;

}  // namespace

bool ExpandedIsCheaper(const ModelConfig& config, int64_t group_heads, int64_t num_tokens, int64_t context_len) {
  const double rank = static_cast<double>(config.kv_lora_rank), rope = static_cast<double>(config.qk_rope_head_dim);
  const double nope = static_cast<double>(config.qk_nope_head_dim), dv = static_cast<double>(config.v_head_dim);
  const double tokens = static_cast<double>(num_tokens), keys = static_cast<double>(context_len);
  // Causal pairs: every new token sees the prefix and the new tokens up to itself.
  const double pairs = tokens * (keys - tokens) + tokens * (tokens + 1) / 2;
  const int64_t ctas = (num_tokens + kExpandedQueriesPerCta - 1) / kExpandedQueriesPerCta * group_heads;
  const double filled = std::min(1.0, static_cast<double>(ctas) / kSms);
  // Per head: both forms' costs scale with the heads alike.
  const double absorbed = pairs * 2 * (rank + rope + rank) / kAbsorbedPairRate +
                          tokens * 2 * rank * (nope + dv) / kGemmRate;
  const double expanded =
      pairs * 2 * (nope + rope + dv) / (kExpandedPairRate * filled) + keys * 2 * rank * (nope + dv) / kGemmRate;
  return expanded < absorbed;
}

int64_t ExpandedGroupHeads(const ModelConfig& config, int64_t heads, int64_t context_len, int64_t element_bytes,
                           int64_t scratch_bytes) {
  const int64_t latent = context_len * config.latent_dim() * element_bytes;
  const int64_t per_head = context_len * (config.qk_nope_head_dim + config.v_head_dim) * element_bytes;
  if (per_head <= 0 || latent + per_head > scratch_bytes) return 0;
  const int64_t fit = std::min(heads, (scratch_bytes - latent) / per_head);
  const int64_t groups = (heads + fit - 1) / fit;
  return (heads + groups - 1) / groups;
}

}  // namespace mlaserve
