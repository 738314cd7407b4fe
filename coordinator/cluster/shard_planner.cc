#include "coordinator/cluster/shard_planner.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace mlaserve {
namespace {

// The tokens of latent KV each attention replica of `plan` must hold.
int64_t NeededReplicaTokens(const ParallelPlan& plan, const PlanRequest& request) {
  if (request.kv_pool_tokens > 0) return request.kv_pool_tokens;
  const int64_t sequences = (request.kv_sequences + plan.dp_attention - 1) / plan.dp_attention;
  return sequences * request.kv_context;
}

int64_t UsableBytes(int64_t memory_bytes, const PlanRequest& request) {
  return static_cast<int64_t>(std::floor(static_cast<double>(memory_bytes) * request.memory_utilization));
}

// The plan of `dp_attention` replicas over a group of `size` ranks, experts
// as the user fixed them or over as many ranks as they divide.
absl::StatusOr<ParallelPlan> PlanForGroup(const ModelConfig& config, int size, int dp_attention,
                                          const PlanRequest& request) {
  ParallelPlan plan;
  plan.dp_attention = dp_attention;
  plan.tp = size / dp_attention;
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

std::string KvDemand(const ParallelPlan& plan, const PlanRequest& request) {
  if (request.kv_pool_tokens > 0) return absl::StrCat("a pool of ", request.kv_pool_tokens, " tokens");
  return absl::StrCat((request.kv_sequences + plan.dp_attention - 1) / plan.dp_attention, " sequence(s) of ",
                      request.kv_context, " tokens in each of ", plan.dp_attention, " replica(s)");
}

// The measured throughput of `plan` on `workers` workers, if any.
std::optional<double> Measured(const ParallelPlan& plan, int workers, const std::vector<PlanMeasurement>& measured) {
  std::optional<double> best;
  for (const PlanMeasurement& m : measured) {
    if (m.workers == workers && m.plan == plan) best = std::max(best.value_or(0), m.output_tokens_per_s);
  }
  return best;
}

// `fitting` is in the order of preference.
ClusterPlan Choose(std::vector<ClusterPlan> fitting, int workers, const std::vector<PlanMeasurement>& measured) {
  ClusterPlan* fastest = nullptr;
  std::vector<std::string> figures;
  for (ClusterPlan& candidate : fitting) {
    const std::optional<double> rate = Measured(candidate.plan, workers, measured);
    if (!rate.has_value()) continue;
    figures.push_back(absl::StrFormat("%s %.1f", candidate.plan.ToString(), *rate));
    if (fastest == nullptr || *rate > *Measured(fastest->plan, workers, measured)) fastest = &candidate;
  }
  if (fastest == nullptr) {
    fitting[0].why = measured.empty() ? "the smallest group that fits, with the fewest attention replicas"
                                      : absl::StrCat("the smallest group that fits (no plan that fits was measured on ",
                                                     workers, " workers)");
    return fitting[0];
  }
  fastest->why = absl::StrCat("the fastest measured on ", workers, " workers (output tokens/s: ",
                              absl::StrJoin(figures, ", "), ")");
  return *fastest;
}

}  // namespace

std::string GiB(int64_t bytes) { return absl::StrFormat("%.1f", static_cast<double>(bytes) / (1ull << 30)); }

std::string ClusterPlan::ToString() const {
  return absl::StrCat(num_groups, " group(s) of ", plan.ToString(), "; per rank ", GiB(rank.weight_bytes),
                      " GiB weights, ", GiB(rank.reserve_bytes), " GiB reserve, ", GiB(rank.kv_bytes), " GiB KV (",
                      rank.kv_tokens, " tokens per replica)");
}

absl::StatusOr<RankBudget> BudgetRank(const ModelConfig& config, const ParallelPlan& plan, int64_t memory_bytes,
                                      const PlanRequest& request) {
  RankBudget budget;
  for (int g = 0; g < plan.group_size(); ++g) {
    ASSIGN_OR_RETURN(const ShardLayout layout, MakeShardLayout(config, plan, g));
    budget.weight_bytes = std::max(budget.weight_bytes, ShardWeightBytes(config, layout, request.weights));
  }
  budget.reserve_bytes = request.reserve_bytes;
  budget.needed_kv_bytes = NeededReplicaTokens(plan, request) * request.kv_bytes_per_token;
  if (request.kv_pool_tokens > 0) {
    budget.kv_bytes = budget.needed_kv_bytes;
  } else if (memory_bytes > 0) {
    budget.kv_bytes =
        std::max<int64_t>(0, UsableBytes(memory_bytes, request) - budget.weight_bytes - budget.reserve_bytes);
  }
  budget.kv_tokens = request.kv_bytes_per_token > 0 ? budget.kv_bytes / request.kv_bytes_per_token : 0;
  return budget;
}

std::vector<absl::StatusOr<ParallelPlan>> CandidatePlans(const ModelConfig& config, int workers,
                                                         const PlanRequest& request) {
  std::vector<absl::StatusOr<ParallelPlan>> plans;
  for (int size = 1; size <= workers; ++size) {
    if (workers % size != 0) continue;
    for (int dp = 1; dp <= size; ++dp) {
      if (size % dp != 0) continue;
      if ((request.tp > 0 && size / dp != request.tp) || (request.dp_attention > 0 && dp != request.dp_attention)) {
        continue;
      }
      plans.push_back(PlanForGroup(config, size, dp, request));
    }
  }
  return plans;
}

absl::StatusOr<ClusterPlan> PlanCluster(const ModelConfig& config, const std::vector<int64_t>& worker_memory_bytes,
                                        const PlanRequest& request) {
  const int workers = static_cast<int>(worker_memory_bytes.size());
  if (workers == 0) return absl::InvalidArgumentError("no workers to plan for");
  int64_t memory = 0;  // the smallest known memory
  for (int64_t m : worker_memory_bytes) {
    if (m > 0) memory = memory == 0 ? m : std::min(memory, m);
  }
  // Why each candidate failed, once each: a refusal names them all.
  std::vector<std::string> why_not;
  auto refuse = [&why_not](std::string reason) {
    if (std::find(why_not.begin(), why_not.end(), reason) == why_not.end()) why_not.push_back(std::move(reason));
  };
  std::vector<ClusterPlan> fitting;
  for (const absl::StatusOr<ParallelPlan>& plan : CandidatePlans(config, workers, request)) {
    if (!plan.ok()) {
      refuse(std::string(plan.status().message()));
      continue;
    }
    ASSIGN_OR_RETURN(const RankBudget budget, BudgetRank(config, *plan, memory, request));
    if (memory > 0 && budget.needed_bytes() > UsableBytes(memory, request)) {
      refuse(absl::StrCat("plan ", plan->ToString(), " needs ", GiB(budget.needed_bytes()), " GiB per rank (",
                          GiB(budget.weight_bytes), " weights, ", GiB(budget.reserve_bytes), " reserve, ",
                          GiB(budget.needed_kv_bytes), " KV for ", KvDemand(*plan, request), "), workers offer ",
                          GiB(UsableBytes(memory, request)), " GiB (", request.memory_utilization, " of ", GiB(memory),
                          ")"));
      continue;
    }
    fitting.push_back(ClusterPlan{*plan, workers / plan->group_size(), budget});
  }
  if (!fitting.empty()) return Choose(std::move(fitting), workers, request.measured);
  if (why_not.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(workers, " workers cannot form groups of tp=", request.tp,
                                                   " x dp_attention=", request.dp_attention, " (0: any)"));
  }
  return absl::InvalidArgumentError(absl::StrCat("no plan fits ", workers, " workers: ", absl::StrJoin(why_not, "; ")));
}

}  // namespace mlaserve
