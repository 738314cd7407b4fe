#include "coordinator/serving_engine.h"

#include <algorithm>
#include <iostream>
#include <limits>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/status_macros.h"
#include "worker/kv_cache.h"

namespace mlaserve {

ServingEngine::ServingEngine(const Tokenizer& tokenizer, const ModelConfig& config, ServingOptions options,
                             ServingMetrics& metrics, WorkerRegistry* registry)
    : tokenizer_(tokenizer),
      config_(config),
      options_(std::move(options)),
      metrics_(metrics),
      registry_(registry),
      transfer_(metrics, options_.transfer_timeout) {}

ServingEngine::~ServingEngine() {
  std::vector<std::unique_ptr<EngineGroup>> groups;
  {
    absl::MutexLock lock(&mu_);
    // Moves and drains use the groups: let them finish first.
    mu_.Await(absl::Condition(
        +[](ServingEngine* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e->mu_) { return e->moves_.empty() && e->drains_ == 0; },
        this));
    groups.swap(groups_);
  }
  groups.clear();  // joins the loops, which end their requests with kAbort
}

void ServingEngine::AddGroup(std::unique_ptr<EngineGroup> group) {
  EngineGroup* from = group.get();
  group->SetHandoff([this, from](std::unique_ptr<Sequence> seq, BlockHold hold) {
    StartMove(from, std::move(seq), std::move(hold));
  });
  absl::MutexLock lock(&mu_);
  has_prefill_groups_ = has_prefill_groups_ || group->role() == GroupRole::kPrefill;
  groups_.push_back(std::move(group));
}

void ServingEngine::OnWorkerDeath(int32_t worker_id) {
  absl::MutexLock lock(&mu_);
  for (const auto& group : groups_) {
    if (group->HasWorker(worker_id)) {
      group->Fail(absl::UnavailableError(
          absl::StrCat("worker ", worker_id, " of engine group ", group->id(), " died; the request was lost with it")));
    }
  }
}

absl::Status ServingEngine::Validate(const GenerateInput& input) const {
  const SamplingOptions& s = input.sampling;
  const int64_t prompt_len = static_cast<int64_t>(input.prompt_ids.size());
  if (prompt_len == 0) return absl::InvalidArgumentError("the prompt is empty");
  for (int32_t id : input.prompt_ids) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
  }
  if (s.max_tokens < 1) return absl::InvalidArgumentError("max_tokens must be at least 1");
  if (prompt_len + s.max_tokens > max_context()) {
    return absl::InvalidArgumentError(absl::StrCat("this model's maximum context length is ", max_context(),
                                                   " tokens; the prompt has ", prompt_len,
                                                   " and max_tokens asks for ", s.max_tokens, " more"));
  }
  if (!(s.temperature >= 0)) return absl::InvalidArgumentError("temperature must be non-negative");
  if (!(s.top_p > 0 && s.top_p <= 1)) return absl::InvalidArgumentError("top_p must be in (0, 1]");
  if (s.top_k < 0) return absl::InvalidArgumentError("top_k must be non-negative (0: no limit)");
  if (s.logprobs < -1 || s.logprobs > kMaxLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("logprobs must be in [0, ", kMaxLogprobs, "] (-1: none)"));
  }
  // A request that cannot fit in a group's whole cache would wait forever.
  for (const auto& group : groups_) {
    if (BlocksFor(prompt_len + s.max_tokens, group->block_size()) > group->num_blocks()) {
      return absl::InvalidArgumentError(absl::StrCat("the prompt plus max_tokens (", prompt_len + s.max_tokens,
                                                     " tokens) does not fit in the KV cache of ",
                                                     group->num_blocks() * group->block_size(), " tokens"));
    }
  }
  return absl::OkStatus();
}

ServingEngine::Routing ServingEngine::Route(const std::vector<int32_t>& prompt) {
  EngineGroup* least_loaded = nullptr;
  EngineGroup* best_cached = nullptr;
  int64_t min_load = std::numeric_limits<int64_t>::max(), best_cached_tokens = 0, best_cached_load = 0,
          least_loaded_tokens = 0;
  for (const auto& group : groups_) {
    // New requests start in prefill groups when the cluster has roles.
    if (!group->alive() || (group->role() == GroupRole::kDecode && has_prefill_groups_)) continue;
    const int64_t load = group->load();
    const int64_t cached = group->CachedPrefixTokens(prompt);
    if (load < min_load) {
      min_load = load;
      least_loaded = group.get();
      least_loaded_tokens = cached;
    }
    if (cached > best_cached_tokens || (cached == best_cached_tokens && best_cached != nullptr && load < best_cached_load)) {
      best_cached_tokens = cached;
      best_cached_load = load;
      best_cached = group.get();
    }
  }
  if (best_cached != nullptr && best_cached_tokens > 0 && best_cached_load <= min_load + options_.cache_affinity_slack) {
    return {best_cached, best_cached_tokens, nullptr, 0};
  }
  if (best_cached == least_loaded) return {least_loaded, least_loaded_tokens, nullptr, 0};
  return {least_loaded, least_loaded_tokens, best_cached, best_cached_tokens};
}

bool ServingEngine::ShouldMigrate(int64_t num_blocks, int64_t block_size) const {
  if (options_.migration != MigrationPolicy::kAuto) return options_.migration == MigrationPolicy::kAlways;
  const double bandwidth = transfer_bytes_per_s_, prefill = prefill_tokens_per_s_;
  // Uncalibrated: MLA's latent KV is small, moving it is the better bet.
  if (bandwidth <= 0 || prefill <= 0) return true;
  const double transfer_s = static_cast<double>(num_blocks * bytes_per_block_) / bandwidth;
  return transfer_s < static_cast<double>(num_blocks * block_size) / prefill;
}

absl::Status ServingEngine::MigrateBlocks(EngineGroup* from, const BlockHold& hold, const std::vector<int32_t>& tokens,
                                          EngineGroup* to) {
  const int64_t num_tokens = static_cast<int64_t>(hold.blocks.size()) * from->block_size();
  absl::StatusOr<BlockHold> reserved = to->Reserve(static_cast<int64_t>(hold.blocks.size()));
  absl::Status status = reserved.status();
  if (reserved.ok()) {
    status = transfer_.Copy({from->ReplicaWorkers(hold.replica), hold.blocks},
                            {to->ReplicaWorkers(reserved->replica), reserved->blocks});
    if (status.ok()) to->CommitPrefix(*reserved, tokens);
    to->Release(*reserved);  // committed blocks stay cached; the others go back to the free list
  }
  from->Release(hold);
  metrics_.AddRemotePrefixTokens(status.ok() ? "migrated" : "recomputed", static_cast<double>(num_tokens));
  if (!status.ok()) std::cerr << "coordinator: KV migration failed, recomputing instead: " << status << "\n";
  return status;
}

absl::StatusOr<int64_t> ServingEngine::Submit(GenerateInput input, UpdateCallback on_update) {
  auto seq = std::make_unique<Sequence>();
  EngineGroup* group = nullptr;
  Routing routing;
  {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(Validate(input));
    int64_t queued = 0;
    for (const auto& g : groups_) queued += g->alive() ? g->load() : 0;
    if (queued >= options_.max_queued_requests) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the server is at its limit of ", options_.max_queued_requests, " queued requests"));
    }
    routing = Route(input.prompt_ids);
    group = routing.group;
    if (group == nullptr) return absl::UnavailableError("no live worker group can serve requests");
    seq->id = next_id_++;
    seq->seed = input.sampling.seed.has_value() ? *input.sampling.seed : seed_rng_();
    request_group_[seq->id] = group;
  }
  // A busier group caches more of the prompt: move that prefix here unless
  // recomputing it is cheaper (or the move fails).
  if (routing.donor != nullptr && routing.donor_tokens > routing.cached_tokens) {
    const int64_t extra = routing.donor_tokens - routing.cached_tokens;
    if (ShouldMigrate(BlocksFor(routing.donor_tokens, group->block_size()), group->block_size())) {
      const BlockHold hold = routing.donor->HoldPrefix(input.prompt_ids);
      if (!hold.blocks.empty()) MigrateBlocks(routing.donor, hold, input.prompt_ids, group).IgnoreError();
    } else {
      metrics_.AddRemotePrefixTokens("recomputed", static_cast<double>(extra));
    }
  }
  seq->prompt_len = static_cast<int64_t>(input.prompt_ids.size());
  seq->tokens = std::move(input.prompt_ids);
  seq->detokenizer = std::make_unique<Detokenizer>(tokenizer_, input.sampling.stop);
  seq->sampling = std::move(input.sampling);
  seq->arrival = absl::Now();
  const int64_t id = seq->id;
  seq->on_update = [this, id, on_update = std::move(on_update)](const GenerateUpdate& update) {
    if (update.finished()) {
      absl::MutexLock lock(&mu_);
      request_group_.erase(id);
    }
    on_update(update);
  };
  group->Submit(std::move(seq));
  return id;
}

void ServingEngine::StartMove(EngineGroup* from, std::unique_ptr<Sequence> seq, BlockHold hold) {
  {
    absl::MutexLock lock(&mu_);
    ++moves_[from];
  }
  std::thread([this, from, seq = std::move(seq), hold = std::move(hold)]() mutable {
    Move(from, std::move(seq), std::move(hold));
    absl::MutexLock lock(&mu_);
    if (--moves_[from] == 0) moves_.erase(from);
  }).detach();
}

EngineGroup* ServingEngine::MoveDestination(EngineGroup* from) {
  EngineGroup* best = nullptr;
  int64_t best_load = 0;
  for (const auto& group : groups_) {
    if (group.get() == from || !group->alive() || group->role() == GroupRole::kPrefill) continue;
    const int64_t load = group->load();
    if (best == nullptr || load < best_load) {
      best = group.get();
      best_load = load;
    }
  }
  return best;
}

void ServingEngine::Move(EngineGroup* from, std::unique_ptr<Sequence> seq, BlockHold hold) {
  EngineGroup* to = nullptr;
  const int64_t id = seq->id;
  {
    absl::MutexLock lock(&mu_);
    moving_.insert(id);
    to = MoveDestination(from);
    // Without a decode group a prefill group finishes its own sequences.
    if (to == nullptr && from->role() == GroupRole::kPrefill && from->alive()) to = from;
    request_group_[seq->id] = to != nullptr ? to : from;
  }
  if (to == nullptr) {
    from->Release(hold);
    {
      absl::MutexLock lock(&mu_);
      moving_.erase(id);
      cancelled_while_moving_.erase(id);
    }
    from->Submit(std::move(seq));  // a draining group with nowhere to go: the loop ends it
    return;
  }
  if (to != from) {
    // On failure the destination recomputes what did not arrive.
    if (!hold.blocks.empty()) MigrateBlocks(from, hold, seq->tokens, to).IgnoreError();
    metrics_.CountSequenceMoved(from->role() == GroupRole::kPrefill ? "disaggregation" : "drain");
  } else {
    from->Release(hold);
  }
  bool cancelled = false;
  {
    absl::MutexLock lock(&mu_);
    moving_.erase(id);
    cancelled = cancelled_while_moving_.erase(id) > 0;
  }
  to->Submit(std::move(seq));
  if (cancelled) to->Cancel(id);
}

absl::Status ServingEngine::DrainWorker(int32_t worker_id) {
  EngineGroup* group = nullptr;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& g : groups_) {
      if (g->HasWorker(worker_id)) group = g.get();
    }
    if (group == nullptr) return absl::NotFoundError(absl::StrCat("no engine group has worker ", worker_id));
    if (!group->alive()) return absl::OkStatus();  // already draining, or dead
    if (MoveDestination(group) == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("no other engine group can take the requests of worker ", worker_id, "'s group"));
    }
    ++drains_;
  }
  std::cerr << "coordinator: draining engine group " << group->id() << " (worker " << worker_id << " asked)\n";
  group->Drain();
  std::thread([this, group] { FinishDrain(group); }).detach();
  return absl::OkStatus();
}

void ServingEngine::FinishDrain(EngineGroup* group) {
  absl::MutexLock lock(&mu_);
  // Done once the group has handed everything over and every move has
  // copied its KV out (the workers serve those reads until then).
  auto done = [this, group]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return group->drained() && moves_.count(group) == 0;
  };
  while (!done()) mu_.AwaitWithTimeout(absl::Condition(&done), absl::Milliseconds(50));
  for (const WorkerInfo& w : group->workers()) {
    if (registry_ != nullptr) registry_->Retire(w.id);
  }
  std::cerr << "coordinator: engine group " << group->id() << " drained; its workers may go\n";
  --drains_;
}

absl::Status ServingEngine::Calibrate(int64_t bytes_per_block) {
  bytes_per_block_ = bytes_per_block;
  EngineGroup* a = nullptr;
  EngineGroup* b = nullptr;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& g : groups_) {
      if (!g->alive()) continue;
      (a == nullptr ? a : b) = g.get();
      if (b != nullptr) break;
    }
  }
  if (b == nullptr) return absl::OkStatus();
  // The link: a few blocks (their contents do not matter) from a to b.
  constexpr int64_t kBlocks = 8;
  ASSIGN_OR_RETURN(BlockHold from, a->Reserve(kBlocks));
  absl::StatusOr<BlockHold> to = b->Reserve(kBlocks);
  absl::Status copied = to.status();
  const absl::Time start = absl::Now();
  if (to.ok()) copied = transfer_.Copy({a->ReplicaWorkers(from.replica), from.blocks}, {b->ReplicaWorkers(to->replica), to->blocks});
  const double transfer_s = absl::ToDoubleSeconds(absl::Now() - start);
  a->Release(from);
  if (to.ok()) b->Release(*to);
  RETURN_IF_ERROR(copied);
  transfer_bytes_per_s_ = static_cast<double>(kBlocks * bytes_per_block) / transfer_s;
  // The prefill rate: one prompt of a few blocks, timed end to end.
  GenerateInput input;
  std::mt19937 rng(1);
  input.prompt_ids.resize(4 * a->block_size());
  for (int32_t& id : input.prompt_ids) id = static_cast<int32_t>(rng() % config_.vocab_size);
  input.sampling.max_tokens = 1;
  absl::Notification done;
  const absl::Time prefill_start = absl::Now();
  RETURN_IF_ERROR(Submit(input, [&done](const GenerateUpdate& u) {
                    if (u.finished()) done.Notify();
                  }).status());
  done.WaitForNotification();
  prefill_tokens_per_s_ = static_cast<double>(input.prompt_ids.size()) / absl::ToDoubleSeconds(absl::Now() - prefill_start);
  std::cerr << "coordinator: calibrated KV migration: link " << transfer_bytes_per_s_ / 1e6 << " MB/s, prefill "
            << prefill_tokens_per_s_ << " tokens/s, " << bytes_per_block << " bytes per block\n";
  return absl::OkStatus();
}

void ServingEngine::Cancel(int64_t request_id) {
  absl::MutexLock lock(&mu_);
  if (moving_.count(request_id) > 0) cancelled_while_moving_.insert(request_id);
  auto it = request_group_.find(request_id);
  if (it != request_group_.end()) it->second->Cancel(request_id);
}

EngineHealth ServingEngine::Health() const {
  absl::MutexLock lock(&mu_);
  EngineHealth health;
  for (const auto& group : groups_) {
    if (group->alive()) health.serving = true;
  }
  if (registry_ != nullptr) {
    health.live_workers = registry_->num_live();
    health.total_workers = registry_->num_registered();
  }
  return health;
}

}  // namespace mlaserve
