// A discrete-event simulator of a serving cluster: the coordinator's own
// router, schedulers and block managers (prefix index, preemption,
// disaggregation hand-offs, prefix migrations) run over simulated engine
// groups whose steps cost what a StepCost says, under a bench workload
// (tests/bench/workload.h) in a closed or Poisson loop. What it reports per
// request is what //:bench and //:scale_bench measure, so a prediction and a
// measurement go through the same summary (tests/bench/stats.h).
//
// The engine loop is reproduced as EngineGroup runs it: step N+1 is scheduled
// and launched before step N's samples come back, so a group keeps up to two
// steps launched, and one that finds nothing to run waits for a submission.
#ifndef MLASERVE_SIMULATOR_CLUSTER_SIMULATOR_H_
#define MLASERVE_SIMULATOR_CLUSTER_SIMULATOR_H_

#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/serving/placement.h"
#include "coordinator/serving/router.h"
#include "coordinator/serving/scheduler.h"
#include "simulator/step_cost.h"
#include "tests/bench/stats.h"
#include "tests/bench/workload.h"

namespace mlaserve::sim {

struct GroupSpec {
  GroupRole role = GroupRole::kMixed;
  int workers = 1;
  int dp_attention = 1;
  int64_t num_blocks = 0;  // per attention replica
  int64_t block_size = 64;
  SchedulerOptions scheduler;
  std::shared_ptr<const StepCost> cost;  // REQUIRES: not null
};

struct ClusterSpec {
  std::vector<GroupSpec> groups;
  RouterOptions router;
  // KV moving between groups: hand-offs from prefill to decode groups and
  // prefixes migrated to the group a request is routed to.
  double kv_bytes_per_s = 0;  // REQUIRES: positive
  double kv_latency_s = 0;
  int64_t kv_bytes_per_block = 0;
  // What the router's migration rule weighs transfers against (0: it
  // migrates whenever a busier group caches more, as uncalibrated).
  double prefill_tokens_per_s = 0;
};

struct LoadSpec {
  std::vector<bench::Session> sessions;
  int64_t concurrency = 0;  // closed loop: sessions in flight, when positive
  double request_rate = std::numeric_limits<double>::infinity();  // else sessions per second, Poisson
  uint64_t seed = 0;  // of the Poisson gaps
};

struct SimulationResult {
  std::vector<bench::RequestResult> requests;  // in completion order
  double duration_s = 0;                       // simulated, first send to last completion
  int64_t steps = 0;
  int64_t preemptions = 0;
  int64_t handoffs = 0;       // prefill group -> decode group
  int64_t migrations = 0;     // prefixes moved to the routed group
  int64_t migrated_tokens = 0;
  int64_t moved_bytes = 0;    // KV bytes of both

  bench::BenchmarkSummary Summary() const { return bench::Summarize(requests, duration_s); }
};

// Runs `load` on `cluster` until every request is done.
// Errors: InvalidArgument for a spec that cannot run (no group, a group
// without cost or blocks, a prompt longer than a replica's KV pool);
// Internal if requests remain that no group can ever run.
absl::StatusOr<SimulationResult> Simulate(const ClusterSpec& cluster, const LoadSpec& load);

}  // namespace mlaserve::sim

#endif  // MLASERVE_SIMULATOR_CLUSTER_SIMULATOR_H_
