#include "coordinator/serving/engine_group.h"

#include <algorithm>
#include <iostream>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mlaserve {
namespace {

TokenLogprobs FromProto(const internal::v1::TokenLogprobs& logprobs) {
  return TokenLogprobs{logprobs.token_id(), logprobs.logprob(),
                       std::vector<int32_t>(logprobs.top_token_ids().begin(), logprobs.top_token_ids().end()),
                       std::vector<float>(logprobs.top_logprobs().begin(), logprobs.top_logprobs().end())};
}

}  // namespace

EngineGroup::EngineGroup(int32_t group_id, std::vector<WorkerInfo> workers, std::unique_ptr<StepExecutor> executor,
                         GroupOptions options, const ModelConfig& config, ServingMetrics& metrics)
    : group_id_(group_id),
      workers_(std::move(workers)),
      options_(options),
      executor_(std::move(executor)),
      metrics_(metrics),
      replicas_([&] {
        SchedulerOptions scheduler = options.scheduler;
        scheduler.eos_token_ids.assign(config.eos_token_ids.begin(), config.eos_token_ids.end());
        scheduler.max_model_len = config.max_position_embeddings;
        scheduler.prefill_only = options.role == GroupRole::kPrefill;
        // The schedulers run under the lock (Schedule).
        scheduler.can_split = [this](const Sequence& seq, int64_t begin, int64_t tokens) {
          mu_.AssertHeld();
          return context_parallel_.CanSplit(replicas_, seq, begin, tokens);
        };
        std::vector<std::unique_ptr<Replica>> replicas;
        for (int r = 0; r < std::max(1, options.dp_attention); ++r) {
          replicas.push_back(std::make_unique<Replica>(options.num_blocks, options.block_size, scheduler));
        }
        return replicas;
      }()),
      loop_([this] { Loop(); }) {}

EngineGroup::~EngineGroup() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  // A step waiting on a hung worker would hold the loop up to its timeout.
  executor_->Abort(absl::CancelledError("shutting down"));
  loop_.join();
  callbacks_.Flush();  // the final updates reach their requests before the group goes
}

void EngineGroup::Submit(std::unique_ptr<Sequence> seq) {
  const Placement placement = Place(seq->tokens);
  Submit(std::move(seq), placement);
}

void EngineGroup::Submit(std::unique_ptr<Sequence> seq, Placement placement) {
  std::vector<Update> rejected;
  {
    absl::MutexLock lock(&mu_);
    if (failure_.ok() && !stopping_) {
      seq->replica = placement.replica;
      seq->prefix_match = std::move(placement.prefix);
      replicas_[seq->replica]->scheduler.Add(std::move(seq));
      wake_ = true;
      return;
    }
    GenerateUpdate update;
    Finish(*seq, FinishReason::kError, failure_.ok() ? absl::UnavailableError("engine group stopping") : failure_,
           &update);
    rejected.push_back({seq->on_update, std::move(update)});
  }
  for (Update& u : rejected) u.callback(u.update);
}

void EngineGroup::Cancel(int64_t request_id) {
  absl::MutexLock lock(&mu_);
  if (auto it = moving_out_.find(request_id); it != moving_out_.end()) it->second = true;
  cancelled_.insert(request_id);
  wake_ = true;
}

void EngineGroup::Fail(absl::Status why) {
  {
    absl::MutexLock lock(&mu_);
    if (failure_.ok()) failure_ = why;
    wake_ = true;
  }
  executor_->Abort(why);
}

bool EngineGroup::alive() const {
  absl::MutexLock lock(&mu_);
  return failure_.ok() && !stopping_ && !draining_;
}

bool EngineGroup::failed() const {
  absl::MutexLock lock(&mu_);
  return !failure_.ok();
}

bool EngineGroup::HasWorker(int32_t worker_id) const {
  return std::any_of(workers_.begin(), workers_.end(), [&](const WorkerInfo& w) { return w.id == worker_id; });
}

Placement EngineGroup::Place(const std::vector<int32_t>& tokens) {
  absl::MutexLock lock(&mu_);
  return BestReplica(replicas_, tokens, options_.cache_affinity_slack);
}

int64_t EngineGroup::load() const {
  absl::MutexLock lock(&mu_);
  return Load() + arriving_;
}

void EngineGroup::ExpectArrival() {
  absl::MutexLock lock(&mu_);
  ++arriving_;
}

void EngineGroup::Arrived() {
  absl::MutexLock lock(&mu_);
  --arriving_;
}

int64_t EngineGroup::Load() const {
  int64_t total = 0;
  for (const auto& replica : replicas_) total += replica->load();
  return total;
}

bool EngineGroup::HasWork() const {
  // Sequences left to run keep the loop going unless the last Schedule could
  // run none of them; then only a submission, cancellation or failure helps.
  return stopping_ || wake_ || (Load() > 0 && !stalled_);
}

void EngineGroup::Loop() {
  std::optional<LaunchedStep> in_flight;
  absl::Time last_collected = absl::InfinitePast();
  while (true) {
    Plan plan = Schedule(in_flight.has_value());
    Emit(std::move(plan.updates), std::move(plan.moves));
    if (plan.stop) return;
    std::optional<LaunchedStep> launched;
    const int sequences = plan.step.sequences_size();
    if (sequences > 0) launched = Run(plan);
    if (!in_flight.has_value() && sequences == 0) continue;
    absl::Duration wait;
    if (in_flight.has_value()) {
      const absl::Time collecting = absl::Now();
      wait = Postprocess(*in_flight);
      const absl::Time collected = collecting + wait;
      if (options_.trace != nullptr) {
        // The workers run steps one after another: this one started when it
        // was launched or when the one before it came back, the later.
        options_.trace->Record({.group = group_id_,
                                .workers = static_cast<int>(workers_.size()),
                                .shape = in_flight->shape,
                                .seconds = absl::ToDoubleSeconds(collected - std::max(in_flight->launched,
                                                                                       last_collected))});
      }
      last_collected = collected;
    }
    // The host's share of a step: what the GPU would wait for were the loop
    // not overlapped (Dynamo's mocker and SGLang report the same split).
    metrics_.ObserveEngineStep(sequences, absl::ToDoubleSeconds(absl::Now() - plan.begin - wait),
                               absl::ToDoubleSeconds(wait));
    in_flight = std::move(launched);
  }
}

EngineGroup::Plan EngineGroup::Schedule(bool step_in_flight) {
  absl::MutexLock lock(&mu_);
  if (!step_in_flight) mu_.Await(absl::Condition(this, &EngineGroup::HasWork));
  wake_ = false;
  Plan plan;
  plan.begin = absl::Now();
  if (stopping_ || !failure_.ok() || draining_) {
    if (step_in_flight) return plan;  // its tokens first: they are the clients'
    if (draining_ && !stopping_ && failure_.ok()) {
      plan.updates = EndAll(TakeCancelled(), FinishReason::kAbort, absl::CancelledError("cancelled"));
      plan.moves = MoveOutAll();
      stalled_ = true;
    } else if (!stopping_ && !failure_.ok() && move_callback_ != nullptr) {
      plan.updates = EndAll(TakeCancelled(), FinishReason::kAbort, absl::CancelledError("cancelled"));
      std::vector<std::unique_ptr<Sequence>> exhausted;
      plan.moves = FailOverAll(&exhausted);
      for (Update& u : EndAll(std::move(exhausted), FinishReason::kError, failure_)) {
        plan.updates.push_back(std::move(u));
      }
      stalled_ = true;
    } else {
      const absl::Status why = failure_.ok() ? absl::CancelledError("shutting down") : failure_;
      plan.updates = EndAll(RemoveAll(), stopping_ ? FinishReason::kAbort : FinishReason::kError, why);
      plan.stop = stopping_;
    }
    PublishGauges();
    return plan;
  }
  plan.updates = EndAll(TakeCancelled(), FinishReason::kAbort, absl::CancelledError("cancelled"));
  plan.launched.slots.resize(replicas_.size());
  std::vector<std::vector<ScheduledSequence>> scheduled(replicas_.size());
  for (size_t r = 0; r < replicas_.size(); ++r) {
    Scheduler& scheduler = replicas_[r]->scheduler;
    const int64_t preemptions = scheduler.num_preemptions();
    scheduled[r] = scheduler.Schedule();
    BuildStep(static_cast<int>(r), scheduled[r], &plan);
    metrics_.CountPreemptions(static_cast<double>(scheduler.num_preemptions() - preemptions));
  }
  context_parallel_.Plan(replicas_, scheduled, &plan.step);
  for (const std::vector<ScheduledSequence>& computed : ComputedByReplica(scheduled, plan.step)) {
    plan.launched.shape.AddReplica(computed);
  }
  for (const internal::v1::ContextParallelChunk& chunk : plan.step.context_parallel()) {
    metrics_.CountContextParallelChunk(
        static_cast<double>(std::accumulate(chunk.slice_tokens().begin(), chunk.slice_tokens().end(), int64_t{0})));
  }
  if (plan.step.sequences_size() > 0) {
    plan.step.set_step_id(next_step_id_++);
    for (const auto& replica : replicas_) {
      for (int64_t id : replica->scheduler.TakeReleased()) plan.step.add_released(id);
    }
    for (int64_t id : context_parallel_.TakeReleased()) plan.step.add_released(id);
  }
  // Nothing to run and nothing coming back: wait for a submission,
  // cancellation or failure.
  stalled_ = plan.step.sequences_size() == 0 && !step_in_flight;
  PublishGauges();
  return plan;
}

void EngineGroup::BuildStep(int replica, const std::vector<ScheduledSequence>& scheduled, Plan* plan) {
  for (const ScheduledSequence& s : scheduled) {
    Sequence& seq = *s.seq;
    internal::v1::StepSequence* q = plan->step.add_sequences();
    q->set_request_id(seq.id);
    q->set_replica(replica);
    if (!seq.on_workers) {
      q->set_start(true);
      q->mutable_sampling()->set_temperature(seq.sampling.temperature);
      q->mutable_sampling()->set_top_k(seq.sampling.top_k);
      q->mutable_sampling()->set_top_p(seq.sampling.top_p);
      q->mutable_sampling()->set_seed(seq.seed);
      q->set_logprobs(seq.sampling.logprobs >= 0);
      q->set_top_logprobs(std::max(0, seq.sampling.logprobs));
      seq.on_workers = true;
    }
    q->mutable_new_blocks()->Add(seq.block_table.begin() + seq.blocks_on_workers, seq.block_table.end());
    seq.blocks_on_workers = static_cast<int64_t>(seq.block_table.size());
    const auto first = seq.tokens.begin() + s.begin;
    if (s.num_tokens == 1 && *first == kPendingToken) {
      q->set_sampled_input(true);  // the token the workers sampled last step
    } else {
      q->mutable_token_ids()->Add(first, first + s.num_tokens);
    }
    q->set_context_len(s.begin + s.num_tokens);
    q->set_sample(s.sample);
    if (s.sample) {
      const int64_t position = s.begin + s.num_tokens;
      q->set_sample_index(static_cast<int32_t>(position - seq.prompt_len));
      plan->launched.slots[replica].push_back({seq.id, position});
    }
  }
}

std::optional<EngineGroup::LaunchedStep> EngineGroup::Run(Plan& plan) {
  absl::Status launched = executor_->Launch(plan.step);
  plan.launched.launched = absl::Now();
  if (launched.ok()) return std::move(plan.launched);
  absl::MutexLock lock(&mu_);
  if (failure_.ok()) failure_ = launched;
  return std::nullopt;
}

absl::Duration EngineGroup::Postprocess(const LaunchedStep& step) {
  const absl::Time waiting = absl::Now();
  absl::StatusOr<std::vector<internal::v1::StepResponse>> sampled = executor_->Collect();
  const absl::Duration wait = absl::Now() - waiting;
  std::vector<Update> updates;
  std::vector<OutgoingMove> moves;
  std::vector<std::unique_ptr<Sequence>> finished;
  {
    absl::MutexLock lock(&mu_);
    stalled_ = false;
    for (size_t r = 0; sampled.ok() && r < step.slots.size(); ++r) {
      const internal::v1::StepResponse& response = (*sampled)[r];
      const size_t tokens = response.sampled_token_ids_size();
      if (tokens != step.slots[r].size() || response.logprobs_size() != static_cast<int>(tokens)) {
        sampled = absl::InternalError(absl::StrCat("replica ", r, " returned ", tokens, " tokens and ",
                                                   response.logprobs_size(), " logprobs for ", step.slots[r].size(),
                                                   " samples"));
      }
    }
    if (!sampled.ok()) {
      if (failure_.ok()) failure_ = sampled.status();
      return wait;  // the next Schedule ends every request
    }
    const absl::Time now = absl::Now();
    for (size_t r = 0; r < step.slots.size(); ++r) {
      const internal::v1::StepResponse& response = (*sampled)[r];
      Postprocessed done = replicas_[r]->scheduler.Postprocess(step.slots[r], response.sampled_token_ids());
      for (SampleResult& sample : done.samples) {
        Sequence& seq = *sample.seq;
        if (seq.num_known_output() == 1) {
          seq.first_token_time = now;
          metrics_.ObserveTimeToFirstToken(absl::ToDoubleSeconds(now - seq.arrival));
        }
        GenerateUpdate update;
        update.token_ids = {sample.token};
        update.text = std::move(sample.text);
        if (seq.sampling.logprobs >= 0) update.logprobs = {FromProto(response.logprobs(sample.row))};
        if (sample.reason != FinishReason::kNone) {
          Finish(seq, sample.reason, absl::OkStatus(), &update);
        } else if (options_.role == GroupRole::kPrefill && seq.num_known_output() == 1) {
          moves.push_back(MoveOut(static_cast<int>(r), &seq, seq.num_computed));
        }
        updates.push_back({seq.on_update, std::move(update)});
      }
      metrics_.AddGenerationTokens(static_cast<double>(done.samples.size()));
      for (auto& seq : done.finished) finished.push_back(std::move(seq));
    }
    PublishGauges();
  }
  Emit(std::move(updates), std::move(moves));
  return wait;
}

void EngineGroup::Emit(std::vector<Update> updates, std::vector<OutgoingMove> moves) {
  if (updates.empty() && moves.empty()) return;
  // Shared: std::function wants a copyable callable, and moves own their sequences.
  auto batch = std::make_shared<std::pair<std::vector<Update>, std::vector<OutgoingMove>>>(std::move(updates),
                                                                                        std::move(moves));
  callbacks_.Post([this, batch] { Deliver(std::move(batch->first), std::move(batch->second)); });
}

void EngineGroup::Deliver(std::vector<Update> updates, std::vector<OutgoingMove> moves) {
  for (Update& u : updates) u.callback(u.update);
  if (moves.empty()) return;
  MoveCallback on_move;
  {
    absl::MutexLock lock(&mu_);
    on_move = move_callback_;
  }
  for (OutgoingMove& m : moves) {
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);
      auto it = moving_out_.find(m.seq->id);
      cancelled = it->second;
      moving_out_.erase(it);
    }
    if (!cancelled) {
      on_move(std::move(m.seq), std::move(m.hold));
      continue;
    }
    // Cancelled after it left the scheduler, before it reached the mover:
    // nobody else would see the cancellation, so it ends here as any cancel.
    Release(m.hold);
    std::vector<std::unique_ptr<Sequence>> ended;
    ended.push_back(std::move(m.seq));
    for (Update& u : EndAll(std::move(ended), FinishReason::kAbort, absl::CancelledError("cancelled"))) {
      u.callback(u.update);
    }
  }
}

EngineGroup::OutgoingMove EngineGroup::MoveOut(int r, Sequence* seq, int64_t kv_tokens) {
  Replica& replica = *replicas_[r];
  OutgoingMove out;
  out.hold.replica = r;
  const int64_t whole_blocks = kv_tokens / options_.block_size;
  out.hold.blocks.assign(seq->block_table.begin(), seq->block_table.begin() + whole_blocks);
  // The hold keeps the KV once the sequence lets go of its table; Remove
  // leaves the sequence as if preempted, ready to resume elsewhere.
  if (absl::Status held = replica.blocks.Acquire(out.hold.blocks); !held.ok()) {
    std::cerr << "engine group " << group_id_ << ": " << held << "\n";
    out.hold.blocks.clear();
  }
  out.seq = replica.scheduler.Remove(seq->id);
  moving_out_.emplace(out.seq->id, false);
  return out;
}

std::vector<EngineGroup::OutgoingMove> EngineGroup::MoveOutAll() {
  context_parallel_.ReleaseAll(replicas_);
  std::vector<OutgoingMove> out;
  for (size_t r = 0; r < replicas_.size(); ++r) {
    for (Sequence* seq : replicas_[r]->scheduler.sequences()) {
      out.push_back(MoveOut(static_cast<int>(r), seq, seq->num_computed));  // no step is in flight
    }
  }
  return out;
}

std::vector<EngineGroup::OutgoingMove> EngineGroup::FailOverAll(std::vector<std::unique_ptr<Sequence>>* exhausted) {
  context_parallel_.ReleaseAll(replicas_);
  std::vector<OutgoingMove> out;
  for (size_t r = 0; r < replicas_.size(); ++r) {
    Scheduler& scheduler = replicas_[r]->scheduler;
    for (Sequence* seq : scheduler.sequences()) {
      if (seq->failovers >= kMaxFailovers) {
        exhausted->push_back(scheduler.Remove(seq->id));
        continue;
      }
      ++seq->failovers;
      // Every rank of a replica holds its latent KV: where one is still
      // alive, what steps that came back wrote moves (steps in flight when
      // the group failed may have written part of theirs, past it); the rest
      // is recomputed.
      out.push_back(MoveOut(static_cast<int>(r), seq, seq->num_written));
    }
  }
  return out;
}

void EngineGroup::SetMoveCallback(MoveCallback on_move) {
  absl::MutexLock lock(&mu_);
  move_callback_ = std::move(on_move);
}

void EngineGroup::Drain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  wake_ = true;
}

bool EngineGroup::drained() const {
  absl::MutexLock lock(&mu_);
  return draining_ && Load() == 0 && moving_out_.empty();
}

BlockHold EngineGroup::HoldPrefix(const std::vector<int32_t>& tokens) {
  absl::MutexLock lock(&mu_);
  // The longest cached prefix, however busy its replica: it is only read.
  Placement best = BestReplica(replicas_, tokens, std::numeric_limits<int64_t>::max());
  BlockHold hold{best.replica, std::move(best.prefix.blocks)};
  if (!replicas_[hold.replica]->blocks.Acquire(hold.blocks).ok()) hold.blocks.clear();
  return hold;
}

absl::StatusOr<BlockHold> EngineGroup::Reserve(int64_t num_blocks) {
  absl::MutexLock lock(&mu_);
  if (!failure_.ok() || stopping_ || draining_) return absl::UnavailableError("engine group cannot take KV now");
  int best = 0;
  for (size_t r = 1; r < replicas_.size(); ++r) {
    if (replicas_[r]->load() < replicas_[best]->load()) best = static_cast<int>(r);
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> blocks, replicas_[best]->blocks.Allocate(num_blocks));
  PublishGauges();
  return BlockHold{best, std::move(blocks)};
}

void EngineGroup::CommitPrefix(const BlockHold& hold, const std::vector<int32_t>& tokens) {
  absl::MutexLock lock(&mu_);
  const size_t prefix = hold.blocks.size() * options_.block_size;
  absl::Status cached = replicas_[hold.replica]->blocks.Cache(
      absl::MakeConstSpan(tokens).subspan(0, std::min(prefix, tokens.size())), hold.blocks);
  if (!cached.ok()) std::cerr << "engine group " << group_id_ << ": " << cached << "\n";
}

void EngineGroup::Release(const BlockHold& hold) {
  absl::MutexLock lock(&mu_);
  absl::Status released = replicas_[hold.replica]->blocks.Release(hold.blocks);
  if (!released.ok()) std::cerr << "engine group " << group_id_ << ": " << released << "\n";
  PublishGauges();
}

std::vector<WorkerInfo> EngineGroup::ReplicaWorkers(int replica) const {
  return std::vector<WorkerInfo>(workers_.begin() + replica * options_.tp,
                                 workers_.begin() + (replica + 1) * options_.tp);
}

void EngineGroup::Finish(const Sequence& seq, FinishReason reason, absl::Status error, GenerateUpdate* update) {
  update->finish_reason = reason;
  update->error = std::move(error);
  update->prompt_tokens = static_cast<int32_t>(seq.prompt_len);
  update->completion_tokens = static_cast<int32_t>(seq.num_output());
  update->cached_prompt_tokens = static_cast<int32_t>(seq.cached_prompt_tokens);
  const absl::Time now = absl::Now();
  metrics_.ObserveEndToEnd(absl::ToDoubleSeconds(now - seq.arrival));
  if (seq.num_output() > 1) {
    metrics_.ObserveTimePerOutputToken(absl::ToDoubleSeconds(now - seq.first_token_time) / (seq.num_output() - 1));
  }
  metrics_.AddPromptTokens(static_cast<double>(seq.prompt_len - seq.cached_prompt_tokens),
                           static_cast<double>(seq.cached_prompt_tokens));
  metrics_.CountFinished(reason);
}

std::vector<EngineGroup::Update> EngineGroup::EndAll(std::vector<std::unique_ptr<Sequence>> seqs,
                                                     FinishReason reason, const absl::Status& error) {
  std::vector<Update> updates;
  for (std::unique_ptr<Sequence>& seq : seqs) {
    GenerateUpdate update;
    update.text = seq->detokenizer->Flush();
    Finish(*seq, reason, reason == FinishReason::kError ? error : absl::OkStatus(), &update);
    updates.push_back({seq->on_update, std::move(update)});
  }
  return updates;
}

std::vector<std::unique_ptr<Sequence>> EngineGroup::TakeCancelled() {
  std::vector<std::unique_ptr<Sequence>> out;
  for (int64_t id : cancelled_) {
    for (const auto& replica : replicas_) {
      if (std::unique_ptr<Sequence> seq = replica->scheduler.Remove(id)) out.push_back(std::move(seq));
    }
  }
  cancelled_.clear();
  return out;
}

std::vector<std::unique_ptr<Sequence>> EngineGroup::RemoveAll() {
  context_parallel_.ReleaseAll(replicas_);
  std::vector<std::unique_ptr<Sequence>> out;
  for (const auto& replica : replicas_) {
    for (std::unique_ptr<Sequence>& seq : replica->scheduler.RemoveAll()) out.push_back(std::move(seq));
  }
  return out;
}

void EngineGroup::PublishGauges() {
  const std::string group = absl::StrCat(group_id_);
  double waiting = 0, running = 0, used = 0, free = 0;
  for (const auto& replica : replicas_) {
    waiting += static_cast<double>(replica->scheduler.num_waiting());
    running += static_cast<double>(replica->scheduler.num_running());
    used += static_cast<double>(replica->blocks.num_referenced_blocks());
    free += static_cast<double>(replica->blocks.num_free_blocks() + replica->blocks.num_evictable_blocks());
  }
  metrics_.SetQueued(group, waiting);
  metrics_.SetRunning(group, running);
  metrics_.SetKvBlocks(group, used, free);
}

}  // namespace mlaserve
