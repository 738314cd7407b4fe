#include "common/shard_layout.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mlaserve {
namespace {

// Slice `index` of `parts` equal slices of [0, total).
Range EvenSlice(int64_t total, int parts, int index) {
  const int64_t size = total / parts;
  return {index * size, (index + 1) * size};
}

absl::Status CheckDivides(int64_t total, int parts, const char* what, const char* split) {
  if (total % parts == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " (", total, ") cannot be split ", parts, " ways (", split, ")"));
}

}  // namespace

std::string ParallelPlan::ToString() const {
  return absl::StrCat("tp=", tp, " dp_attention=", dp_attention, " ep=", ep, " (", group_size(), " ranks)");
}

int ShardLayout::SlotOfExpert(int64_t e, int64_t num_experts) const {
  // Slot s holds [floor(s * E / ep), floor((s + 1) * E / ep)).
  return static_cast<int>(((e + 1) * plan.ep - 1) / num_experts);
}

absl::Status ValidatePlan(const ModelConfig& c, const ParallelPlan& plan) {
  if (plan.tp < 1 || plan.dp_attention < 1 || plan.ep < 1) {
    return absl::InvalidArgumentError(absl::StrCat("plan ", plan.ToString(), ": degrees must be at least 1"));
  }
  if (plan.group_size() % plan.ep != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan ", plan.ToString(), ": ep must divide the group's ", plan.group_size(), " ranks"));
  }
  const bool moe = c.n_routed_experts > 0;
  if (!moe && plan.ep > 1) return absl::InvalidArgumentError("ep > 1 but the model has no routed experts");
  if (moe && plan.ep > c.n_routed_experts) {
    return absl::InvalidArgumentError(absl::StrCat("ep=", plan.ep, " exceeds the ", c.n_routed_experts, " routed experts"));
  }
  if (auto s = CheckDivides(c.num_attention_heads, plan.tp, "attention heads", "tp"); !s.ok()) return s;
  if (auto s = CheckDivides(c.intermediate_size, plan.tp, "dense MLP intermediate_size", "tp"); !s.ok()) return s;
  if (moe) {
    const int64_t shared = c.moe_intermediate_size * c.n_shared_experts;
    if (auto s = CheckDivides(shared, plan.tp, "shared experts' inner dimension", "tp"); !s.ok()) return s;
    if (auto s = CheckDivides(c.moe_intermediate_size, plan.moe_tp(), "moe_intermediate_size", "group size / ep");
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ShardLayout> MakeShardLayout(const ModelConfig& c, const ParallelPlan& plan, int group_rank) {
  if (absl::Status s = ValidatePlan(c, plan); !s.ok()) return s;
  if (group_rank < 0 || group_rank >= plan.group_size()) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", group_rank, " outside a group of ", plan.group_size()));
  }
  ShardLayout s;
  s.plan = plan;
  s.group_rank = group_rank;
  s.replica = group_rank / plan.tp;
  s.tp_rank = group_rank % plan.tp;
  s.expert_slot = group_rank / plan.moe_tp();
  s.moe_tp_rank = group_rank % plan.moe_tp();
  s.heads = EvenSlice(c.num_attention_heads, plan.tp, s.tp_rank);
  s.dense_inner = EvenSlice(c.intermediate_size, plan.tp, s.tp_rank);
  s.shared_inner = EvenSlice(c.moe_intermediate_size * c.n_shared_experts, plan.tp, s.tp_rank);
  s.experts = {s.expert_slot * c.n_routed_experts / plan.ep, (s.expert_slot + 1) * c.n_routed_experts / plan.ep};
  s.expert_inner = EvenSlice(c.moe_intermediate_size, plan.moe_tp(), s.moe_tp_rank);
  s.vocab_shard_rows = (c.vocab_size + plan.tp - 1) / plan.tp;
  s.vocab = {std::min(c.vocab_size, s.tp_rank * s.vocab_shard_rows),
             std::min(c.vocab_size, (s.tp_rank + 1) * s.vocab_shard_rows)};
  return s;
}

int64_t ShardParameterCount(const ModelConfig& c, const ShardLayout& s) {
  const int64_t d = c.hidden_size, heads = s.heads.size(), rank = c.kv_lora_rank, rope = c.qk_rope_head_dim;
  const int64_t q_in = c.q_lora_rank > 0 ? c.q_lora_rank : d;
  int64_t attention = heads * c.qk_head_dim() * q_in + (rank + rope) * d + rank + 2 * heads * c.qk_nope_head_dim * rank +
                      heads * c.v_head_dim * rank + d * heads * c.v_head_dim + 2 * d;
  if (c.q_lora_rank > 0) attention += c.q_lora_rank * d + c.q_lora_rank;
  const int64_t dense = 3 * d * s.dense_inner.size();
  const int64_t moe = c.n_routed_experts * d + (c.topk_method == TopkMethod::kNoauxTc ? c.n_routed_experts : 0) +
                      s.experts.size() * 3 * d * s.expert_inner.size() + 3 * d * s.shared_inner.size();
  int64_t total = (2 * s.vocab_shard_rows + 1) * d + d;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    total += attention + (c.is_moe_layer(layer) ? moe : dense);
  }
  return total;
}

}  // namespace mlaserve
