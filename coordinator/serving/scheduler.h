// Continuous batching for one attention replica of an engine group
// (vLLM/nano-vllm style): every step runs the running sequences' next tokens
// (one for a decode, a chunk for a prompt still being prefilled) and admits
// waiting sequences FCFS, all under a per-step token budget and a cap on
// running sequences. Prompts reuse cached prefix blocks. When blocks run out
// the most recently admitted sequence is preempted: its blocks are released
// and it waits at the front of the queue to be recomputed, with its output so
// far kept, so nothing it returns changes.
//
// Steps overlap: a step is scheduled before the tokens of the step before it
// are known. Scheduling a step that samples appends a placeholder
// (kPendingToken) for the token it will sample, which the next step may take
// as input (the workers fill it in); Postprocess puts the real token in its
// place, appends nothing, and applies the stop rules (the scheduler's job, as
// in nano-vllm). A sequence that stops at step N may thus have run step N+1
// too; that step's token is dropped, never returned. A sequence whose
// launched sample is certain to be its last (length limits, prefill-only
// groups) is not scheduled again.
//
// Not thread-safe: the engine group calls it under its lock.
#ifndef MLASERVE_COORDINATOR_SERVING_SCHEDULER_H_
#define MLASERVE_COORDINATOR_SERVING_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"
#include "coordinator/serving/block_manager.h"
#include "coordinator/serving/sequence.h"

namespace mlaserve {

// Whether a group of `replicas` attention replicas splits prompts of at
// least `min_tokens` tokens over them (context parallelism; 0: never).
inline bool SplitsPrompts(int replicas, int64_t min_tokens) { return replicas > 1 && min_tokens > 0; }

struct SchedulerOptions {
  int64_t max_num_seqs = 64;          // running sequences per step
  int64_t max_batched_tokens = 8192;  // tokens per step (decodes and prefill chunks)
  // Stop rules of Postprocess.
  std::vector<int32_t> eos_token_ids;
  int64_t max_model_len = int64_t{1} << 40;  // prompt + output tokens
  // A prefill-only group: a sequence stops being scheduled once its first
  // token is launched (it moves to a decode group after).
  bool prefill_only = false;
  // Context parallelism (context_parallel.h): a sequence with at least this
  // many tokens still to compute takes a chunk of up to
  // `context_parallel_replicas` times the step's budget, marked to be split
  // over that many replicas, each computing about one budget's worth, where
  // `can_split` says the replicas can take a chunk of `tokens` of `seq` from
  // `begin` now (their copies of its KV can be had). 0 or no `can_split`:
  // never.
  int64_t context_parallel_min_tokens = 0;
  int context_parallel_replicas = 1;
  std::function<bool(const Sequence& seq, int64_t begin, int64_t tokens)> can_split;
};

struct ScheduledSequence {
  Sequence* seq = nullptr;
  int64_t begin = 0;       // tokens [begin, begin + num_tokens) run this step
  int64_t num_tokens = 0;
  bool sample = false;     // the step samples the token at begin + num_tokens
  bool context_parallel = false;  // a long prompt's chunk, to split over the replicas
};

// Where a launched step's sample goes: the placeholder at `position` of
// request `request_id`'s tokens.
struct SampleSlot {
  int64_t request_id = 0;
  int64_t position = 0;
};

// One sample of a step after Postprocess.
struct SampleResult {
  int64_t row = 0;  // index of the sample in the step's samples
  Sequence* seq = nullptr;  // owned by the scheduler, or by `finished` when it ended
  int32_t token = 0;
  std::string text;  // newly releasable text (with the rest flushed when it ended)
  FinishReason reason = FinishReason::kNone;
};

struct Postprocessed {
  std::vector<SampleResult> samples;
  std::vector<std::unique_ptr<Sequence>> finished;  // removed, blocks released
};

class Scheduler {
 public:
  Scheduler(BlockManager& blocks, SchedulerOptions options);

  void Add(std::unique_ptr<Sequence> seq);

  // The next step, with blocks allocated for it and the step's progress
  // recorded (num_computed advanced, a placeholder appended for each sample,
  // the fully known computed blocks cached); empty when nothing can run.
  std::vector<ScheduledSequence> Schedule();

  // Applies a launched step's samples: `tokens[i]` replaces the placeholder
  // of `slots[i]`, then the stop rules (stop and EOS tokens, stop strings,
  // length limits) decide whether the sequence ends; ended sequences are
  // removed. Slots of sequences no longer here (cancelled, finished, moved
  // away) are skipped.
  // REQUIRES: slots.size() == tokens.size(); the slots of one launched step,
  // steps postprocessed in launch order.
  Postprocessed Postprocess(absl::Span<const SampleSlot> slots, absl::Span<const int32_t> tokens);

  // Removes a sequence (finished, cancelled or failed), releasing its blocks.
  // REQUIRES: no sample of it is in flight, or its slots will be skipped.
  std::unique_ptr<Sequence> Remove(int64_t id);
  // Removes every sequence (the group failed), releasing their blocks.
  std::vector<std::unique_ptr<Sequence>> RemoveAll();
  // Every sequence, running ones first (they stay owned here).
  std::vector<Sequence*> sequences() const;
  // Ids of sequences the workers knew and no longer need (removed or
  // preempted since the last call).
  std::vector<int64_t> TakeReleased();

  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }

 private:
  // Makes room for `seq` to hold `num_tokens` more tokens, preempting later
  // running sequences if needed; false if `seq` itself had to be preempted.
  bool Reserve(Sequence* seq, int64_t num_tokens);
  bool Admit(int64_t budget, std::vector<ScheduledSequence>* step);
  // The chunk `seq` may take from `budget` at `begin` (tokens before it
  // computed or cached), and whether it is to be split over the replicas.
  std::pair<int64_t, bool> Chunk(const Sequence& seq, int64_t begin, int64_t budget) const;
  void Preempt(Sequence* seq);
  void ReleaseBlocks(Sequence* seq);
  // Records that `s` is launched: KV computed, placeholder appended.
  void Launch(const ScheduledSequence& s);
  // Caches the blocks of `seq` whose tokens are all computed and known.
  void CacheKnown(const Sequence& seq);
  // Whether `seq`'s token at the end is the last it may produce.
  bool AtLengthLimit(const Sequence& seq) const;
  FinishReason Apply(Sequence& seq, int64_t position, int32_t token, std::string* text);

  BlockManager& blocks_;
  SchedulerOptions options_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  absl::flat_hash_map<int64_t, Sequence*> by_id_;  // every sequence here
  std::vector<int64_t> released_;
  int64_t num_preemptions_ = 0;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_SCHEDULER_H_
