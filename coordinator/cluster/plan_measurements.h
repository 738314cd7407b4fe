// The throughputs //:scale_bench measured (its scale.json), as the shard
// planner weighs them (PlanRequest::measured).
#ifndef MLASERVE_COORDINATOR_CLUSTER_PLAN_MEASUREMENTS_H_
#define MLASERVE_COORDINATOR_CLUSTER_PLAN_MEASUREMENTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/cluster/shard_planner.h"

namespace mlaserve {

// The rows of a scale.json that ran and name their plan (tp, dp_attention,
// ep); rows that failed are left out. InvalidArgument when the file is not
// a scale.json.
absl::StatusOr<std::vector<PlanMeasurement>> ParsePlanMeasurements(const std::string& json_text);
// ParsePlanMeasurements of the file at `path`; NotFound when it cannot be read.
absl::StatusOr<std::vector<PlanMeasurement>> ReadPlanMeasurements(const std::string& path);

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_CLUSTER_PLAN_MEASUREMENTS_H_
