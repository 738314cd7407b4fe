// One engine group: the workers that together hold one copy of the model,
// with the scheduler, block manager and prefix index that drive them (one of
// each per attention replica: with data-parallel attention, each replica's
// ranks hold the KV of their own sequences). A loop thread runs
// schedule -> run -> postprocess: it schedules step N+1 and launches it on
// the workers (through a StepExecutor) before it collects step N and has the
// schedulers postprocess its tokens, so the host's work on one step overlaps
// the workers' work on the next. Only the loop thread touches sequences or
// emits updates; one callback thread delivers them (and the sequences moving
// out) in emission order, so each request sees its updates in order and the
// loop pays one wake per step for all of them. Other threads submit and
// cancel under the lock and wake the loop.
#ifndef MLASERVE_COORDINATOR_SERVING_ENGINE_GROUP_H_
#define MLASERVE_COORDINATOR_SERVING_ENGINE_GROUP_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/model_config.h"
#include "coordinator/serving/block_manager.h"
#include "coordinator/serving/callback_thread.h"
#include "coordinator/serving/context_parallel.h"
#include "coordinator/serving/metrics.h"
#include "coordinator/serving/placement.h"
#include "coordinator/serving/replica.h"
#include "coordinator/serving/scheduler.h"
#include "coordinator/serving/step_executor.h"
#include "coordinator/serving/step_trace.h"
#include "coordinator/cluster/worker_registry.h"

namespace mlaserve {

// How many times a request goes on in another group after its own failed
// before it fails with it.
inline constexpr int kMaxFailovers = 2;

struct GroupOptions {
  GroupRole role = GroupRole::kMixed;
  int tp = 1;            // ranks per attention replica; workers are in rank order
  int dp_attention = 1;  // attention replicas
  int64_t num_blocks = 0;  // per replica
  int64_t block_size = 64;
  // A replica's blocks are dealt over its head shards (decode context
  // parallelism, worker/kv_shards.h): its KV cannot move to another group
  // from its first rank, so moves recompute it.
  bool decode_context_parallel = false;
  SchedulerOptions scheduler;
  absl::Duration step_timeout = absl::Minutes(5);
  StepTrace* trace = nullptr;  // records every step when set; outlives the group
  // A replica caching a longer prefix takes a request while at most this
  // many requests busier than the least loaded replica (BestReplica).
  int64_t cache_affinity_slack = 8;
};

// Blocks of one replica kept referenced (never evicted or reused) for a KV
// transfer until released.
struct BlockHold {
  int replica = 0;
  std::vector<int32_t> blocks;
};

// Receives a sequence the group no longer serves (drain, disaggregation),
// with its computed whole blocks held in `hold`; it owns the sequence now and
// must release the hold. Called on the group's callback thread, without its
// lock.
using MoveCallback = std::function<void(std::unique_ptr<Sequence> seq, BlockHold hold)>;

class EngineGroup {
 public:
  // `executor` reaches `workers` (in rank order).
  EngineGroup(int32_t group_id, std::vector<WorkerInfo> workers, std::unique_ptr<StepExecutor> executor,
              GroupOptions options, const ModelConfig& config, ServingMetrics& metrics);
  ~EngineGroup();  // stops the loop; pending requests end with kAbort

  // Starts serving `seq` where Place() would put it now.
  void Submit(std::unique_ptr<Sequence> seq);
  // Starts serving `seq` where `placement` says, without walking the prefix
  // index again: routing's walk decided, and admission resumes from it.
  // REQUIRES: `placement` came from this group's Place().
  void Submit(std::unique_ptr<Sequence> seq, Placement placement);
  // Asks the loop to end a request with kAbort and free its blocks.
  void Cancel(int64_t request_id);
  // The group cannot serve any more (a worker died or hung): its requests
  // end with kError carrying `why`, and it refuses new ones; a step waiting
  // on a worker is given up.
  void Fail(absl::Status why);

  // Sequences move out through `on_move` (set before the first Submit).
  void SetMoveCallback(MoveCallback on_move);
  // Stops admitting and hands every sequence over, now and as they arrive;
  // alive() turns false so routing skips the group.
  void Drain();
  // Whether a drain has moved every sequence out.
  bool drained() const;

  // KV migration. The longest cached prefix of `tokens` (whole blocks, at
  // most all but the last token) in the replica holding the longest, held;
  // empty when nothing is cached.
  BlockHold HoldPrefix(const std::vector<int32_t>& tokens);
  // `num_blocks` fresh blocks of the least loaded replica, held.
  absl::StatusOr<BlockHold> Reserve(int64_t num_blocks);
  // Enters held blocks, now holding the KV of `tokens` (whole blocks), into
  // the replica's prefix index; they stay held until released.
  void CommitPrefix(const BlockHold& hold, const std::vector<int32_t>& tokens);
  void Release(const BlockHold& hold);
  // The ranks of `replica`, in rank order.
  std::vector<WorkerInfo> ReplicaWorkers(int replica) const;
  const std::vector<WorkerInfo>& workers() const { return workers_; }

  bool alive() const;
  // Whether the group failed (a worker died, a step broke): its workers hold
  // nothing of it any more. A draining or stopping group is not failed.
  bool failed() const;
  bool HasWorker(int32_t worker_id) const;
  // Where `tokens` would run now, for routing: one walk of each replica's
  // prefix index.
  Placement Place(const std::vector<int32_t>& tokens);
  // Requests waiting or running, and those on their way here.
  int64_t load() const;
  // A request routed or moving here counts in load() from when it is
  // claimed to when it is submitted (a KV migration may come between), so
  // that requests routed or moved at the same time spread over the groups.
  void ExpectArrival();
  // REQUIRES: an ExpectArrival before it; call once the request is submitted.
  void Arrived();
  int64_t num_blocks() const { return options_.num_blocks; }  // per replica
  int64_t block_size() const { return options_.block_size; }
  int num_replicas() const { return options_.dp_attention; }
  int32_t id() const { return group_id_; }
  GroupRole role() const { return options_.role; }
  bool spreads_kv() const { return options_.decode_context_parallel; }

 private:
  struct Update {
    UpdateCallback callback;
    GenerateUpdate update;
  };


  struct OutgoingMove {
    std::unique_ptr<Sequence> seq;
    BlockHold hold;
  };
  // A step launched on the workers: where each replica's samples go.
  struct LaunchedStep {
    std::vector<std::vector<SampleSlot>> slots;  // per replica
    StepShape shape;
    absl::Time launched;  // when Launch returned
  };
  // What the loop does next, decided under the lock.
  struct Plan {
    std::vector<Update> updates;     // to emit first
    std::vector<OutgoingMove> moves;
    internal::v1::StepRequest step;  // empty when nothing runs
    LaunchedStep launched;
    bool stop = false;
    absl::Time begin;  // when planning started, after any wait for work
  };

  void Loop();
  // Waits for work unless a step is in flight, then plans: ends what was
  // cancelled, failed or stopped, moves a drain's sequences out, or schedules the next
  // step. Stopping, failing and draining first let the step in flight finish.
  Plan Schedule(bool step_in_flight) ABSL_LOCKS_EXCLUDED(mu_);
  // The step's message: each sequence's change since the workers last saw it.
  void BuildStep(int replica, const std::vector<ScheduledSequence>& scheduled, Plan* plan)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Launches the planned step; nullopt (and the group failed) on error.
  std::optional<LaunchedStep> Run(Plan& plan) ABSL_LOCKS_EXCLUDED(mu_);
  // Collects `step`, has the schedulers apply its tokens and emits the
  // updates; a prefill group's sequences that got their first token leave.
  // Returns how long it waited for the workers.
  absl::Duration Postprocess(const LaunchedStep& step) ABSL_LOCKS_EXCLUDED(mu_);
  // Hands `updates` and `moves` to the callback thread, behind those
  // emitted before.
  void Emit(std::vector<Update> updates, std::vector<OutgoingMove> moves) ABSL_LOCKS_EXCLUDED(mu_);
  // On the callback thread: runs the requests' update callbacks, then the
  // move callback.
  void Deliver(std::vector<Update> updates, std::vector<OutgoingMove> moves) ABSL_LOCKS_EXCLUDED(mu_);
  // Takes `seq` out of `replica` to move to another group, holding the
  // whole blocks of its first `kv_tokens` tokens (their KV moves; the rest is
  // recomputed there).
  // REQUIRES: the KV of those tokens is written (no step in flight writes it).
  OutgoingMove MoveOut(int replica, Sequence* seq, int64_t kv_tokens) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<OutgoingMove> MoveOutAll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A failed group's requests, taken out to go on in other groups from what
  // their clients have seen: with the KV that steps which came back wrote
  // (read from a rank still alive, else recomputed), at most kMaxFailovers times,
  // so that a request that breaks groups cannot take them all down; those past
  // it go to `exhausted`, to end with the failure.
  std::vector<OutgoingMove> FailOverAll(std::vector<std::unique_ptr<Sequence>>* exhausted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t Load() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fills the final fields of `update` and records the request's metrics.
  void Finish(const Sequence& seq, FinishReason reason, absl::Status error, GenerateUpdate* update);
  // The final updates of `seqs`, already out of their schedulers: the text
  // their detokenizers held back, then the finish. Needs no lock: the
  // sequences are the caller's.
  std::vector<Update> EndAll(std::vector<std::unique_ptr<Sequence>> seqs, FinishReason reason,
                             const absl::Status& error);
  std::vector<std::unique_ptr<Sequence>> TakeCancelled() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<std::unique_ptr<Sequence>> RemoveAll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int32_t group_id_;
  const std::vector<WorkerInfo> workers_;
  const GroupOptions options_;
  const std::unique_ptr<StepExecutor> executor_;
  ServingMetrics& metrics_;
  int64_t next_step_id_ = 0;

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Replica>> replicas_ ABSL_GUARDED_BY(mu_);
  // Copies of long prompts' KV in the other replicas (declared after the
  // replicas whose blocks they hold).
  ContextParallel context_parallel_ ABSL_GUARDED_BY(mu_);
  int64_t arriving_ ABSL_GUARDED_BY(mu_) = 0;  // see ExpectArrival
  std::set<int64_t> cancelled_ ABSL_GUARDED_BY(mu_);
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stalled_ ABSL_GUARDED_BY(mu_) = false;  // the last Schedule found nothing to run
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  // Sequences taken out but not yet given to the move callback, and whether
  // they were cancelled meanwhile: a drain is not over while one is on its way.
  std::map<int64_t, bool> moving_out_ ABSL_GUARDED_BY(mu_);
  MoveCallback move_callback_ ABSL_GUARDED_BY(mu_);
  // Runs update and move callbacks off the loop: declared after what they
  // touch, so that it is gone before them.
  CallbackThread callbacks_;
  std::thread loop_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_ENGINE_GROUP_H_
