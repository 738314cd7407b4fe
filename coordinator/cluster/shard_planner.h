// The shard planner: turns the model, the registered workers' memory and the
// user's choices into engine groups. Every group gets the same ParallelPlan
// (common/shard_layout.h); the workers form groups in registration order.
//
// A rank must hold its shard of the weights (counted exactly, in the format
// the workers keep them: coordinator/cluster/weight_bytes.h), a reserve for
// activations and buffers, and its KV cache: a fixed pool, or what memory
// leaves, which must then hold the requested sequences. Under head tensor
// parallelism every rank of an attention replica holds the replica's whole
// latent cache, so more replicas (dp_attention) mean less KV per rank, at the
// price of attention weights replicated across them.
//
// A choice left at 0 is the planner's: among the plans that fit, the one
// with the highest throughput //:scale_bench measured on as many workers,
// when any was measured; otherwise the smallest group that fits (more
// groups serve more requests at once), and within it the fewest attention
// replicas that fit (heads split over the rest), routed experts over the
// whole group as far as the experts allow. Plans that cannot work are
// refused with the reason.
#ifndef MLASERVE_COORDINATOR_CLUSTER_SHARD_PLANNER_H_
#define MLASERVE_COORDINATOR_CLUSTER_SHARD_PLANNER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/shard_layout.h"
#include "coordinator/cluster/weight_bytes.h"

namespace mlaserve {

// Planning's estimate of what a GPU rank holds besides weights and KV (the
// activations of the largest step, CUDA graphs, NCCL and cuBLAS buffers)
// before the workers measure it at start-up. Measured at DeepSeek-V3
// dimensions (all experts on one GPU): 0.25 GiB of activations for a
// 512-token step, 4.2 GiB for an 8192-token one.
inline constexpr int64_t kGpuReserveBytes = int64_t{4} << 30;

// What //:scale_bench measured for a plan on a cluster of `workers` workers.
struct PlanMeasurement {
  ParallelPlan plan;
  int workers = 0;
  double output_tokens_per_s = 0;
};

struct PlanRequest {
  int tp = 0;            // 0: planner's choice
  int dp_attention = 0;  // 0: planner's choice
  int ep = 0;            // 0: planner's choice
  WeightFormat weights;  // as the workers keep them
  // The share of each worker's memory that weights, reserve and KV may fill.
  double memory_utilization = 1.0;
  // Per rank besides weights and KV: activations, CUDA graphs, buffers.
  int64_t reserve_bytes = 0;
  // Latent KV of one token over all layers, as one rank keeps it.
  int64_t kv_bytes_per_token = 0;
  // A KV pool of this many tokens per attention replica (--kv_blocks, CPU
  // workers' default). 0: the pool takes what memory leaves, which must hold
  // kv_sequences sequences of kv_context tokens per group, spread over the
  // group's attention replicas.
  int64_t kv_pool_tokens = 0;
  int64_t kv_sequences = 1;
  int64_t kv_context = 0;
  // Measured throughputs: among the plans that fit, the fastest measured on
  // as many workers wins; without one, the order of preference decides.
  std::vector<PlanMeasurement> measured;
};

// The memory of a plan's largest rank.
struct RankBudget {
  int64_t weight_bytes = 0;
  int64_t reserve_bytes = 0;
  // The KV the plan needs per rank: the fixed pool, or the requested
  // sequences of this rank's replica.
  int64_t needed_kv_bytes = 0;
  // The KV the rank gets: the fixed pool, or what memory leaves (0 when the
  // memory is unknown), and the tokens that is per attention replica.
  int64_t kv_bytes = 0;
  int64_t kv_tokens = 0;
  int64_t needed_bytes() const { return weight_bytes + reserve_bytes + needed_kv_bytes; }
};

struct ClusterPlan {
  ParallelPlan plan;
  int num_groups = 0;
  RankBudget rank;
  std::string why;  // why this plan among those that fit
  std::string ToString() const;
};

// Every plan PlanCluster weighs for `workers` workers, in its order of
// preference (smaller groups first, then fewer attention replicas): the
// plan, or why it does not fit the model.
std::vector<absl::StatusOr<ParallelPlan>> CandidatePlans(const ModelConfig& config, int workers,
                                                         const PlanRequest& request);

// The budget of `plan`'s largest rank on workers of `memory_bytes` (0:
// unknown). InvalidArgument when the plan does not fit the model.
absl::StatusOr<RankBudget> BudgetRank(const ModelConfig& config, const ParallelPlan& plan, int64_t memory_bytes,
                                      const PlanRequest& request);

// `worker_memory_bytes` has one entry per worker; 0 means unknown (assumed
// to fit). InvalidArgument when no plan fits, naming why each candidate
// failed.
absl::StatusOr<ClusterPlan> PlanCluster(const ModelConfig& config, const std::vector<int64_t>& worker_memory_bytes,
                                        const PlanRequest& request);

// Bytes as GiB for messages ("12.5").
std::string GiB(int64_t bytes);

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_CLUSTER_SHARD_PLANNER_H_
