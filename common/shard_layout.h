// How one engine group divides a model among its ranks, and what one rank
// holds. The coordinator's planner chooses a ParallelPlan; every worker derives
// its ShardLayout from the plan and its rank, so both sides agree without
// shipping tensors' ranges around.
//
// A group has tp * dp_attention ranks. Rank g sits in attention replica
// g / tp (replicas hold disjoint sequences and their latent KV) and holds head
// shard g % tp of it (heads, dense-MLP and shared-expert inner slices, and a
// vocabulary slice of the embedding and LM head split tp ways). Routed experts
// are split ep ways over the whole group: rank g serves expert slot
// g / (size / ep), each expert's inner dimension split size / ep ways.
#ifndef MLASERVE_COMMON_SHARD_LAYOUT_H_
#define MLASERVE_COMMON_SHARD_LAYOUT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/model_config.h"

namespace mlaserve {

struct ParallelPlan {
  int tp = 1;            // attention heads split this many ways
  int dp_attention = 1;  // attention replicas in the group
  int ep = 1;            // routed experts split this many ways
  int group_size() const { return tp * dp_attention; }
  int moe_tp() const { return group_size() / ep; }
  std::string ToString() const;
  bool operator==(const ParallelPlan&) const = default;
};

// [begin, end) along one dimension.
struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};

struct ShardLayout {
  ParallelPlan plan;
  int group_rank = 0;
  int replica = 0;      // attention replica
  int tp_rank = 0;      // head shard within the replica
  int expert_slot = 0;  // which expert range
  int moe_tp_rank = 0;  // which inner slice of those experts
  Range heads;
  Range dense_inner;   // of intermediate_size
  Range shared_inner;  // of the shared experts' stacked inner dimension
  Range experts;       // of n_routed_experts
  Range expert_inner;  // of moe_intermediate_size
  // The vocabulary is split in tp slices of vocab_shard_rows (the last may
  // hold fewer real rows; padding rows are zero and their logits dropped).
  Range vocab;
  int64_t vocab_shard_rows = 0;

  // The group's first rank of this rank's replica.
  int replica_root() const { return replica * plan.tp; }
  // Group rank of head shard `tp_rank` of this replica / of inner slice `m` of expert slot `slot`.
  int ExpertRank(int slot, int m) const { return slot * plan.moe_tp() + m; }
  // The expert slot serving expert `e`.
  int SlotOfExpert(int64_t e, int64_t num_experts) const;
};

// Checks the plan against the model (heads, inner dimensions and experts must
// divide as the plan splits them) and returns rank `group_rank`'s part;
// InvalidArgument saying why otherwise.
absl::Status ValidatePlan(const ModelConfig& config, const ParallelPlan& plan);
absl::StatusOr<ShardLayout> MakeShardLayout(const ModelConfig& config, const ParallelPlan& plan, int group_rank);

// Parameters the rank holds once loaded (worker/model_weights.h's tensors,
// W_UK counted twice as it is kept in both orientations): memory planning.
int64_t ShardParameterCount(const ModelConfig& config, const ShardLayout& shard);

}  // namespace mlaserve

#endif  // MLASERVE_COMMON_SHARD_LAYOUT_H_
