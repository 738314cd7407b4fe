// Context parallelism for long prompts in an engine group with attention
// replicas: a long prompt's chunk, which its home replica's scheduler marked
// (ScheduledSequence::context_parallel), is cut into one slice per replica;
// each replica computes the queries of its slice and every replica writes the
// whole chunk's latent KV into its own copy of the sequence
// (proto/worker.proto, ContextParallelChunk). So a long prompt's prefill is
// shared by all the group's replicas, and its KV ends where it decodes.
//
// The copies live in the other replicas' block pools, held here: a copy
// starts with the sequence's first chunk, from that replica's cached prefix
// of the tokens before it (all of them or no copy), grows with every
// chunk, enters its replica's prefix index as its blocks fill (so later
// requests there hit it), and is released as soon as a step does not split
// its sequence (prefill done, preempted, cancelled, moved away). Schedulers
// ask CanSplit before they take a long chunk: a prompt whose copies cannot
// be had (a replica without its prefix cached, or without room) takes chunks
// of one budget on its home replica alone. (Should a replica's room go to
// its own sequences in between, Plan finds it cannot split the chunk, which
// then runs on its home replica alone.)
//
// Not thread-safe: the engine group calls it under its lock, after its
// replicas' schedulers.
#ifndef MLASERVE_COORDINATOR_SERVING_CONTEXT_PARALLEL_H_
#define MLASERVE_COORDINATOR_SERVING_CONTEXT_PARALLEL_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"
#include "coordinator/serving/replica.h"
#include "proto/worker.pb.h"

namespace mlaserve {

// A copy on the workers of sequence `id` is sequence CopyId(id) there.
inline int64_t CopyId(int64_t id) { return -id; }

// Each replica's step budget when a group's steps take `group_step_tokens`:
// with context parallelism on (`context_parallel_min_tokens` > 0) and
// several replicas, a split chunk is one budget per replica and a replica's
// step may hold a slice of every replica's split chunk, so the budget is the
// replicas' share; else the whole.
// REQUIRES: group_step_tokens > 0 and dp_attention > 0.
inline int64_t ReplicaStepTokens(int64_t group_step_tokens, int dp_attention, int64_t context_parallel_min_tokens) {
  if (!SplitsPrompts(dp_attention, context_parallel_min_tokens)) return group_step_tokens;
  return std::max<int64_t>(1, group_step_tokens / dp_attention);
}

// What each replica computes in `step`, whose sequences `scheduled` lists
// by replica: the schedulers' sequences, with each chunk `step` splits cut
// to its home replica's slice and its other slices added to the replicas
// computing them (at their positions): a step's shape per replica
// (StepShape::AddReplica).
std::vector<std::vector<ScheduledSequence>> ComputedByReplica(
    absl::Span<const std::vector<ScheduledSequence>> scheduled, const internal::v1::StepRequest& step);

class ContextParallel {
 public:
  ContextParallel() = default;
  ContextParallel(const ContextParallel&) = delete;
  ContextParallel& operator=(const ContextParallel&) = delete;

  // Whether Plan could split a chunk of `tokens` tokens of `seq` (in its
  // replica) from `begin` now: the other replicas have its copies up to
  // `begin`, or `seq` is being admitted and each caches exactly its first
  // `begin` tokens; and each has room for the chunk. (Their own steps may
  // take that room before Plan.)
  bool CanSplit(absl::Span<const std::unique_ptr<Replica>> replicas, const Sequence& seq, int64_t begin,
                int64_t tokens);

  // Splits the marked chunks of `scheduled` (replica r's step is
  // scheduled[r]) whose copies it has or can make, adding the copies'
  // changes and the chunks to `step`, and releases the copies of every
  // sequence not split now.
  // REQUIRES: scheduled.size() == replicas.size(); the schedulers just made
  // these steps (their sequences are the replicas').
  void Plan(absl::Span<const std::unique_ptr<Replica>> replicas,
            absl::Span<const std::vector<ScheduledSequence>> scheduled, internal::v1::StepRequest* step);

  // Releases every copy's blocks (the group stops serving its sequences).
  void ReleaseAll(absl::Span<const std::unique_ptr<Replica>> replicas);

  // Ids of copies the workers knew and no longer need, since the last call.
  std::vector<int64_t> TakeReleased();

  // Sequences with copies now.
  int64_t num_split() const { return static_cast<int64_t>(copies_.size()); }

 private:
  // One replica's copy of a sequence's KV.
  struct Copy {
    std::vector<int32_t> block_table;
    int64_t blocks_on_workers = 0;
    bool on_workers = false;
  };
  struct Copies {
    int home = 0;
    int64_t tokens = 0;       // KV the copies hold (or the step in flight writes)
    std::vector<Copy> copies;  // by replica; the home's is unused
  };

  // CanSplit's conditions but the first (admission): copies up to `begin`
  // or each other replica caching exactly that prefix, and room.
  bool Feasible(absl::Span<const std::unique_ptr<Replica>> replicas, const Sequence& seq, int64_t begin,
                int64_t tokens);
  // Extends (or starts) the copies of `s`'s sequence, living in `home`, to
  // hold its chunk; false, changing nothing, when some replica cannot.
  bool Extend(absl::Span<const std::unique_ptr<Replica>> replicas, int home, const ScheduledSequence& s);
  // Adds the chunk of `s` and its copies' changes to `step`.
  void AddToStep(int home, const ScheduledSequence& s, Copies& copies, internal::v1::StepRequest* step);
  void Release(absl::Span<const std::unique_ptr<Replica>> replicas, int64_t id);

  absl::flat_hash_map<int64_t, Copies> copies_;
  std::vector<int64_t> released_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_CONTEXT_PARALLEL_H_
