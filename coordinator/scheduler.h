// Continuous batching for one engine group (vLLM/nano-vllm style): every step
// runs the running sequences' next tokens (one for a decode, a chunk for a
// prompt still being prefilled) and admits waiting sequences FCFS, all under a
// per-step token budget and a cap on running sequences. Prompts reuse cached
// prefix blocks. When blocks run out the most recently admitted sequence is
// preempted: its blocks are released and it waits at the front of the queue
// to be recomputed, with its output so far kept, so nothing it returns changes.
// Not thread-safe: the engine group calls it under its lock.
#ifndef MLASERVE_COORDINATOR_SCHEDULER_H_
#define MLASERVE_COORDINATOR_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/types/span.h"
#include "coordinator/block_manager.h"
#include "coordinator/sequence.h"

namespace mlaserve {

struct SchedulerOptions {
  int64_t max_num_seqs = 64;         // running sequences per step
  int64_t max_batched_tokens = 512;  // tokens per step (decodes and prefill chunks)
};

struct ScheduledSequence {
  Sequence* seq = nullptr;
  int64_t num_tokens = 0;  // tokens [num_computed, num_computed + num_tokens) run this step
  bool sample = false;     // the step reaches the end of the known tokens
};

class Scheduler {
 public:
  Scheduler(BlockManager& blocks, SchedulerOptions options);

  void Add(std::unique_ptr<Sequence> seq);
  // The next step, with blocks allocated for it; empty when nothing can run.
  std::vector<ScheduledSequence> Schedule();
  // Records a step's progress: KV computed and cached; sampled tokens are
  // appended by the caller beforehand.
  void Advance(const std::vector<ScheduledSequence>& step);
  // Removes a sequence (finished, cancelled or failed), releasing its blocks.
  std::unique_ptr<Sequence> Remove(int64_t id);
  // Removes every sequence (the group failed), releasing their blocks.
  std::vector<std::unique_ptr<Sequence>> RemoveAll();
  // Every sequence, running ones first (they stay owned here).
  std::vector<Sequence*> sequences() const;

  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }

 private:
  // Makes room for `seq` to hold `num_tokens` more tokens, preempting later
  // running sequences if needed; false if `seq` itself had to be preempted.
  bool Reserve(Sequence* seq, int64_t num_tokens);
  bool Admit(int64_t budget, std::vector<ScheduledSequence>* step);
  void Preempt(Sequence* seq);
  void ReleaseBlocks(Sequence* seq);

  BlockManager& blocks_;
  SchedulerOptions options_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  int64_t num_preemptions_ = 0;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SCHEDULER_H_
