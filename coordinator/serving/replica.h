// One attention replica of an engine group: its KV pool and prefix index, and
// the scheduler of the sequences living in it. The coordinator's engine
// groups and the cluster simulator's are made of these.
#ifndef MLASERVE_COORDINATOR_SERVING_REPLICA_H_
#define MLASERVE_COORDINATOR_SERVING_REPLICA_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "coordinator/serving/block_manager.h"
#include "coordinator/serving/placement.h"
#include "coordinator/serving/scheduler.h"

namespace mlaserve {

struct Replica {
  Replica(int64_t num_blocks, int64_t block_size, const SchedulerOptions& options)
      : blocks(num_blocks, block_size), scheduler(blocks, options) {}
  BlockManager blocks;
  Scheduler scheduler;
  // Requests waiting or running.
  int64_t load() const { return scheduler.num_running() + scheduler.num_waiting(); }
};

// Where `tokens` would run among `replicas`: the replica caching the longest
// prefix (one walk of each prefix index; the least loaded among equals),
// unless it holds more than `slack` requests more than the least loaded
// replica, which then takes it -- the router's rule between groups, so that
// one hot prefix cannot pile its requests onto one replica while the others
// idle.
// REQUIRES: replicas is not empty.
inline Placement BestReplica(const std::vector<std::unique_ptr<Replica>>& replicas,
                             const std::vector<int32_t>& tokens, int64_t slack) {
  Placement best, least_loaded;
  for (size_t r = 0; r < replicas.size(); ++r) {
    PrefixMatch m = replicas[r]->blocks.Match(tokens, static_cast<int64_t>(tokens.size()) - 1);
    const int64_t load = replicas[r]->load();
    if (r == 0 || load < replicas[least_loaded.replica]->load()) least_loaded = {static_cast<int>(r), m};
    const bool longer = m.num_tokens > best.cached_tokens();
    if (r == 0 || longer || (m.num_tokens == best.cached_tokens() && load < replicas[best.replica]->load())) {
      best = {static_cast<int>(r), std::move(m)};
    }
  }
  if (replicas[best.replica]->load() > replicas[least_loaded.replica]->load() + slack) return least_loaded;
  return best;
}

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_REPLICA_H_
