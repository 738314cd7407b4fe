// The communicators one rank of an engine group needs under a plan: one over
// the whole group (expert dispatch), one over its attention replica's head
// shards, and one over its head shard's ranks in every replica (context
// parallelism). All are made through the same rendezvous store under
// distinct key prefixes; the factory picks the implementation (Gloo on CPUs,
// NCCL on GPUs).
#ifndef MLASERVE_WORKER_GROUP_COMMS_H_
#define MLASERVE_WORKER_GROUP_COMMS_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/shard_layout.h"
#include "worker/comm/communicator.h"
#include "worker/comm/rendezvous_store.h"
#include "worker/model.h"

namespace mlaserve {

// Makes rank `rank` of `size` ranks meeting under `prefix` in `store`, whose
// waits on peers fail after `timeout`.
using CommunicatorFactory = std::function<absl::StatusOr<std::unique_ptr<Communicator>>(
    RendezvousStore& store, const std::string& prefix, int rank, int size, absl::Duration timeout)>;

struct GroupComms {
  ParallelPlan plan;
  int group_rank = 0;
  std::unique_ptr<Communicator> group;      // null for a one-rank group
  std::unique_ptr<Communicator> attention;  // null without attention TP
  std::unique_ptr<Communicator> context;    // null without attention replicas

  // What the model needs to know (the communicators stay owned here).
  ModelShard shard() const { return {plan, group_rank, group.get(), attention.get(), context.get()}; }
};

absl::StatusOr<GroupComms> ConnectGroup(RendezvousStore& store, const std::string& prefix, const ParallelPlan& plan,
                                        int group_rank, absl::Duration timeout, const CommunicatorFactory& factory);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_GROUP_COMMS_H_
