#include "coordinator/cluster/shard_planner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mlaserve {
namespace {

// Weights and KV of the group's largest shard.
int64_t BytesPerRank(const ModelConfig& config, const ParallelPlan& plan, const PlanRequest& request) {
  int64_t most = 0;
  for (int g = 0; g < plan.group_size(); ++g) {
    const ShardLayout layout = *MakeShardLayout(config, plan, g);
    most = std::max(most, ShardParameterCount(config, layout));
  }
  return most * request.bytes_per_parameter + request.kv_cache_bytes;
}

// The plan for a group of `size` ranks honouring the user's fixed degrees.
absl::StatusOr<ParallelPlan> PlanForGroupSize(const ModelConfig& config, int size, const PlanRequest& request) {
  ParallelPlan plan;
  plan.dp_attention = request.dp_attention > 0 ? request.dp_attention : 1;
  plan.tp = request.tp > 0 ? request.tp : size / plan.dp_attention;
  if (plan.group_size() != size) {
    return absl::InvalidArgumentError(absl::StrCat("tp=", plan.tp, " x dp_attention=", plan.dp_attention,
                                                   " does not make a group of ", size));
  }
  if (request.ep > 0) {
    plan.ep = request.ep;
  } else if (config.n_routed_experts > 0) {
    // The most expert slots that divide the group and leave each slot an expert.
    plan.ep = 1;
    for (int ep = size; ep >= 1; --ep) {
      if (size % ep == 0 && ep <= config.n_routed_experts && ValidatePlan(config, {plan.tp, plan.dp_attention, ep}).ok()) {
        plan.ep = ep;
        break;
      }
    }
  }
  if (absl::Status valid = ValidatePlan(config, plan); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("plan ", plan.ToString(), ": ", valid.message()));
  }
  return plan;
}

std::string GiB(int64_t bytes) { return absl::StrCat(static_cast<double>(bytes) / (1ull << 30)); }

}  // namespace

std::string ClusterPlan::ToString() const {
  return absl::StrCat(num_groups, " group(s) of ", plan.ToString(), ", ", GiB(bytes_per_rank), " GiB per rank");
}

absl::StatusOr<ClusterPlan> PlanCluster(const ModelConfig& config, const std::vector<int64_t>& worker_memory_bytes,
                                        const PlanRequest& request) {
  const int workers = static_cast<int>(worker_memory_bytes.size());
  if (workers == 0) return absl::InvalidArgumentError("no workers to plan for");
  int64_t memory = 0;  // the smallest known memory
  for (int64_t m : worker_memory_bytes) {
    if (m > 0) memory = memory == 0 ? m : std::min(memory, m);
  }
  const bool fixed = request.tp > 0 || request.dp_attention > 0;
  std::string why_not;
  for (int size = 1; size <= workers; ++size) {
    if (workers % size != 0) continue;
    if (fixed && size != std::max(1, request.tp) * std::max(1, request.dp_attention)) continue;
    absl::StatusOr<ParallelPlan> plan = PlanForGroupSize(config, size, request);
    if (!plan.ok()) {
      why_not = std::string(plan.status().message());
      if (fixed) break;
      continue;
    }
    const int64_t bytes = BytesPerRank(config, *plan, request);
    if (memory > 0 && bytes > memory) {
      why_not = absl::StrCat("plan ", plan->ToString(), " needs ", GiB(bytes), " GiB per rank, workers have ",
                             GiB(memory), " GiB");
      continue;
    }
    return ClusterPlan{*plan, workers / size, bytes};
  }
  if (fixed && workers % (std::max(1, request.tp) * std::max(1, request.dp_attention)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(workers, " workers cannot form groups of tp=", std::max(1, request.tp),
                                                   " x dp_attention=", std::max(1, request.dp_attention)));
  }
  return absl::InvalidArgumentError(absl::StrCat("no plan fits ", workers, " workers: ", why_not));
}

}  // namespace mlaserve
