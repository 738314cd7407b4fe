// The shard planner: turns the model, the registered workers' memory and the
// user's choices into engine groups. Every group gets the same ParallelPlan
// (common/shard_layout.h); the workers form groups in registration order.
//
// A choice left at 0 is the planner's: the smallest group whose every rank
// fits its shard of the weights plus its KV cache (more groups serve more
// requests at once), attention heads split over the whole group, and routed
// experts over the whole group as far as the experts allow. Plans that cannot
// work are refused with the reason.
#ifndef MLASERVE_COORDINATOR_CLUSTER_SHARD_PLANNER_H_
#define MLASERVE_COORDINATOR_CLUSTER_SHARD_PLANNER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/shard_layout.h"

namespace mlaserve {

struct PlanRequest {
  int tp = 0;            // 0: planner's choice
  int dp_attention = 0;  // 0: planner's choice (1)
  int ep = 0;            // 0: planner's choice
  int64_t bytes_per_parameter = 4;  // float32 on CPU workers
  int64_t kv_cache_bytes = 0;       // each rank's KV pool
};

struct ClusterPlan {
  ParallelPlan plan;
  int num_groups = 0;
  int64_t bytes_per_rank = 0;  // weights + KV of the largest shard
  std::string ToString() const;
};

// `worker_memory_bytes` has one entry per worker; 0 means unknown (assumed to fit).
absl::StatusOr<ClusterPlan> PlanCluster(const ModelConfig& config, const std::vector<int64_t>& worker_memory_bytes,
                                        const PlanRequest& request);

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_CLUSTER_SHARD_PLANNER_H_
