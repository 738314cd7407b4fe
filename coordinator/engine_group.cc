#include "coordinator/engine_group.h"

#include <algorithm>
#include <future>
#include <iostream>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"

namespace mlaserve {
namespace {

bool Contains(const std::vector<int32_t>& ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

TokenLogprobs FromProto(const internal::v1::TokenLogprobs& logprobs) {
  return TokenLogprobs{logprobs.token_id(), logprobs.logprob(),
                       std::vector<int32_t>(logprobs.top_token_ids().begin(), logprobs.top_token_ids().end()),
                       std::vector<float>(logprobs.top_logprobs().begin(), logprobs.top_logprobs().end())};
}

}  // namespace

EngineGroup::EngineGroup(int32_t group_id, std::vector<WorkerInfo> workers, GroupOptions options,
                         const ModelConfig& config, ServingMetrics& metrics)
    : group_id_(group_id),
      workers_(std::move(workers)),
      options_(options),
      config_(config),
      eos_ids_(config.eos_token_ids.begin(), config.eos_token_ids.end()),
      metrics_(metrics),
      replicas_([&] {
        std::vector<std::unique_ptr<Replica>> replicas;
        for (int r = 0; r < std::max(1, options.dp_attention); ++r) {
          replicas.push_back(std::make_unique<Replica>(options.num_blocks, options.block_size, options.scheduler));
        }
        return replicas;
      }()),
      loop_([this] { Loop(); }) {}

EngineGroup::~EngineGroup() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  loop_.join();
}

void EngineGroup::Submit(std::unique_ptr<Sequence> seq) {
  std::vector<Update> rejected;
  {
    absl::MutexLock lock(&mu_);
    if (failure_.ok() && !stopping_) {
      seq->replica = BestReplica(seq->tokens).replica;
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
  cancelled_.insert(request_id);
  wake_ = true;
}

void EngineGroup::Fail(absl::Status why) {
  absl::MutexLock lock(&mu_);
  if (failure_.ok()) failure_ = std::move(why);
  wake_ = true;
}

bool EngineGroup::alive() const {
  absl::MutexLock lock(&mu_);
  return failure_.ok() && !stopping_ && !draining_;
}

bool EngineGroup::HasWorker(int32_t worker_id) const {
  return std::any_of(workers_.begin(), workers_.end(), [&](const WorkerInfo& w) { return w.id == worker_id; });
}

EngineGroup::ReplicaMatch EngineGroup::BestReplica(const std::vector<int32_t>& tokens) {
  ReplicaMatch best;
  for (size_t r = 0; r < replicas_.size(); ++r) {
    PrefixMatch m = replicas_[r]->blocks.Match(tokens, static_cast<int64_t>(tokens.size()) - 1);
    const bool longer = m.num_tokens > best.match.num_tokens;
    if (r == 0 || longer ||
        (m.num_tokens == best.match.num_tokens && replicas_[r]->load() < replicas_[best.replica]->load())) {
      best = {static_cast<int>(r), std::move(m)};
    }
  }
  return best;
}

int64_t EngineGroup::CachedPrefixTokens(const std::vector<int32_t>& tokens) {
  absl::MutexLock lock(&mu_);
  return BestReplica(tokens).match.num_tokens;
}

int64_t EngineGroup::load() const {
  absl::MutexLock lock(&mu_);
  return Load();
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
  while (true) {
    Step step;
    bool empty = true;
    std::vector<Update> updates;
    std::vector<Handoff> handoffs;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &EngineGroup::HasWork));
      wake_ = false;
      if (stopping_ || !failure_.ok()) {
        const absl::Status why = failure_.ok() ? absl::CancelledError("shutting down") : failure_;
        updates = EndAll(RemoveAll(), failure_.ok() ? FinishReason::kAbort : FinishReason::kError, why);
        PublishGauges();
      } else if (draining_) {
        updates = EndAll(TakeCancelled(), FinishReason::kAbort, absl::CancelledError("cancelled"));
        handoffs = DetachAll();
        stalled_ = true;
        PublishGauges();
      } else {
        updates = EndAll(TakeCancelled(), FinishReason::kAbort, absl::CancelledError("cancelled"));
        for (const auto& replica : replicas_) {
          const int64_t preemptions = replica->scheduler.num_preemptions();
          step.push_back(replica->scheduler.Schedule());
          empty = empty && step.back().empty();
          metrics_.CountPreemptions(static_cast<double>(replica->scheduler.num_preemptions() - preemptions));
        }
        stalled_ = empty;
        PublishGauges();
      }
    }
    for (Update& u : updates) u.callback(u.update);
    updates.clear();
    HandOver(std::move(handoffs));
    handoffs.clear();
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    if (empty) continue;
    absl::StatusOr<std::vector<internal::v1::StepResponse>> sampled = RunStep(step);
    {
      absl::MutexLock lock(&mu_);
      if (sampled.ok()) {
        updates = ApplyStep(step, *sampled, &handoffs);
      } else if (failure_.ok()) {
        failure_ = sampled.status();
      }
    }
    for (Update& u : updates) u.callback(u.update);
    HandOver(std::move(handoffs));
  }
}

absl::StatusOr<std::vector<internal::v1::StepResponse>> EngineGroup::RunStep(const Step& step) {
  internal::v1::StepRequest request;
  request.set_step_id(next_step_id_++);
  for (size_t r = 0; r < step.size(); ++r) {
    for (const ScheduledSequence& s : step[r]) {
      const Sequence& seq = *s.seq;
      internal::v1::StepSequence* q = request.add_sequences();
      q->set_request_id(seq.id);
      q->set_replica(static_cast<int32_t>(r));
      q->mutable_token_ids()->Add(seq.tokens.begin() + seq.num_computed,
                                  seq.tokens.begin() + seq.num_computed + s.num_tokens);
      q->set_context_len(seq.num_computed + s.num_tokens);
      q->mutable_block_table()->Add(seq.block_table.begin(), seq.block_table.end());
      q->set_sample(s.sample);
      q->mutable_sampling()->set_temperature(seq.sampling.temperature);
      q->mutable_sampling()->set_top_k(seq.sampling.top_k);
      q->mutable_sampling()->set_top_p(seq.sampling.top_p);
      q->mutable_sampling()->set_seed(seq.seed);
      q->set_sample_index(static_cast<int32_t>(seq.num_output()));
      q->set_logprobs(seq.sampling.logprobs >= 0);
      q->set_top_logprobs(std::max(0, seq.sampling.logprobs));
    }
  }
  // Every rank of the group runs the same step; each replica's first rank
  // samples that replica's sequences.
  std::vector<std::future<std::pair<grpc::Status, internal::v1::StepResponse>>> calls;
  for (const WorkerInfo& worker : workers_) {
    calls.push_back(std::async(std::launch::async, [&, stub = worker.stub] {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + options_.step_timeout));
      internal::v1::StepResponse response;
      grpc::Status status = stub->Step(&context, request, &response);
      return std::make_pair(status, std::move(response));
    }));
  }
  std::vector<internal::v1::StepResponse> sampled(step.size());
  absl::Status first_error;
  for (size_t rank = 0; rank < calls.size(); ++rank) {
    auto [status, response] = calls[rank].get();
    if (!status.ok() && first_error.ok()) {
      first_error = absl::UnavailableError(absl::StrCat("worker ", workers_[rank].id, " (", workers_[rank].address,
                                                        ") failed a step: ", FromGrpcStatus(status).ToString()));
    }
    if (rank % options_.tp == 0 && rank / options_.tp < sampled.size()) {
      sampled[rank / options_.tp] = std::move(response);
    }
  }
  if (!first_error.ok()) return first_error;
  for (size_t r = 0; r < step.size(); ++r) {
    const auto expected = std::count_if(step[r].begin(), step[r].end(), [](const auto& s) { return s.sample; });
    const int tokens = sampled[r].sampled_token_ids_size();
    if (tokens != expected || sampled[r].logprobs_size() != tokens) {
      return absl::InternalError(absl::StrCat("replica ", r, " returned ", tokens, " tokens and ",
                                              sampled[r].logprobs_size(), " logprobs for ", expected, " samples"));
    }
  }
  return sampled;
}

std::vector<EngineGroup::Update> EngineGroup::ApplyStep(const Step& step,
                                                        const std::vector<internal::v1::StepResponse>& sampled,
                                                        std::vector<Handoff>* handoffs) {
  std::vector<Update> updates;
  for (size_t r = 0; r < step.size(); ++r) ApplyReplicaStep(static_cast<int>(r), step[r], sampled[r], &updates, handoffs);
  PublishGauges();
  return updates;
}

void EngineGroup::ApplyReplicaStep(int r, const std::vector<ScheduledSequence>& step,
                                   const internal::v1::StepResponse& sampled, std::vector<Update>* updates,
                                   std::vector<Handoff>* handoffs) {
  Replica& replica = *replicas_[r];
  replica.scheduler.Advance(step);
  std::vector<int64_t> finished;
  std::vector<Sequence*> prefilled;
  int next = 0;
  const absl::Time now = absl::Now();
  for (const ScheduledSequence& s : step) {
    if (!s.sample) continue;
    Sequence& seq = *s.seq;
    const int32_t token = sampled.sampled_token_ids(next);
    seq.tokens.push_back(token);
    if (seq.num_output() == 1) {
      seq.first_token_time = now;
      metrics_.ObserveTimeToFirstToken(absl::ToDoubleSeconds(now - seq.arrival));
    }
    GenerateUpdate update;
    update.token_ids = {token};
    if (seq.sampling.logprobs >= 0) update.logprobs = {FromProto(sampled.logprobs(next))};
    ++next;
    FinishReason reason = FinishReason::kNone;
    if (Contains(seq.sampling.stop_token_ids, token) || (!seq.sampling.ignore_eos && Contains(eos_ids_, token))) {
      reason = FinishReason::kStop;  // the stop token's text is not part of the output
      update.text = seq.detokenizer->Flush();
    } else {
      update.text = seq.detokenizer->Append(token);
      if (seq.detokenizer->stopped()) reason = FinishReason::kStop;
    }
    if (reason == FinishReason::kNone && (seq.num_output() >= seq.sampling.max_tokens ||
                                          static_cast<int64_t>(seq.tokens.size()) >= config_.max_position_embeddings)) {
      reason = FinishReason::kLength;
      update.text += seq.detokenizer->Flush();
    }
    if (reason != FinishReason::kNone) {
      Finish(seq, reason, absl::OkStatus(), &update);
      finished.push_back(seq.id);
    } else if (options_.role == GroupRole::kPrefill && seq.num_output() == 1) {
      prefilled.push_back(&seq);
    }
    updates->push_back({seq.on_update, std::move(update)});
  }
  metrics_.AddGenerationTokens(static_cast<double>(sampled.sampled_token_ids_size()));
  for (int64_t id : finished) replica.scheduler.Remove(id);
  for (Sequence* seq : prefilled) handoffs->push_back(Detach(r, seq));
}

EngineGroup::Handoff EngineGroup::Detach(int r, Sequence* seq) {
  Replica& replica = *replicas_[r];
  Handoff out;
  out.hold.replica = r;
  const int64_t whole_blocks = seq->num_computed / options_.block_size;
  out.hold.blocks.assign(seq->block_table.begin(), seq->block_table.begin() + whole_blocks);
  // The hold keeps the KV once the sequence lets go of its table; Remove
  // leaves the sequence as if preempted, ready to resume elsewhere.
  if (absl::Status held = replica.blocks.Acquire(out.hold.blocks); !held.ok()) {
    std::cerr << "engine group " << group_id_ << ": " << held << "\n";
    out.hold.blocks.clear();
  }
  out.seq = replica.scheduler.Remove(seq->id);
  return out;
}

std::vector<EngineGroup::Handoff> EngineGroup::DetachAll() {
  std::vector<Handoff> out;
  for (size_t r = 0; r < replicas_.size(); ++r) {
    for (Sequence* seq : replicas_[r]->scheduler.sequences()) out.push_back(Detach(static_cast<int>(r), seq));
  }
  return out;
}

void EngineGroup::HandOver(std::vector<Handoff> handoffs) {
  if (handoffs.empty()) return;
  HandoffCallback handoff;
  {
    absl::MutexLock lock(&mu_);
    handoff = handoff_;
  }
  for (Handoff& h : handoffs) handoff(std::move(h.seq), std::move(h.hold));
}

void EngineGroup::SetHandoff(HandoffCallback handoff) {
  absl::MutexLock lock(&mu_);
  handoff_ = std::move(handoff);
}

void EngineGroup::Drain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  wake_ = true;
}

bool EngineGroup::drained() const {
  absl::MutexLock lock(&mu_);
  return draining_ && Load() == 0;
}

BlockHold EngineGroup::HoldPrefix(const std::vector<int32_t>& tokens) {
  absl::MutexLock lock(&mu_);
  ReplicaMatch best = BestReplica(tokens);
  BlockHold hold{best.replica, std::move(best.match.blocks)};
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
