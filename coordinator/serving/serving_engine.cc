#include "coordinator/serving/serving_engine.h"

#include <algorithm>
#include <future>
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
      transfer_(metrics, options_.transfer_timeout, options_.kv_links),
      router_(RouterOptions{.migration = options_.migration, .cache_affinity_slack = options_.cache_affinity_slack}),
      mover_(transfer_, metrics, registry,
             [this](EngineGroup* from, int64_t request_id) { return ClaimMoveDestination(from, request_id); }) {}

ServingEngine::~ServingEngine() {
  // Moves and drains use the groups: let them finish first.
  mover_.WaitIdle();
  std::vector<std::unique_ptr<EngineGroup>> groups;
  {
    absl::MutexLock lock(&mu_);
    groups.swap(groups_);
  }
  groups.clear();  // joins the loops, which end their requests with kAbort
}

void ServingEngine::AddGroup(std::unique_ptr<EngineGroup> group) {
  EngineGroup* from = group.get();
  group->SetMoveCallback(
      [this, from](std::unique_ptr<Sequence> seq, BlockHold hold) { mover_.Move(from, std::move(seq), std::move(hold)); });
  absl::MutexLock lock(&mu_);
  groups_.push_back(std::move(group));
}

ServingEngine::GroupCensus ServingEngine::TakeCensus() {
  absl::MutexLock lock(&mu_);
  GroupCensus census;
  for (const auto& group : groups_) {
    if (group->alive()) ++census.serving_groups;
    // A draining group's workers still hold its KV until they are retired; a
    // failed group's, while its requests' KV is read out of the survivors.
    if (!group->failed() || mover_.MovesFrom(group.get())) {
      for (const WorkerInfo& w : group->workers()) census.busy_workers.insert(w.id);
    }
    if (!group->alive() && reported_ended_.insert(group->id()).second) census.newly_ended.push_back(group->id());
  }
  return census;
}

std::vector<EngineGroup*> ServingEngine::Groups() const {
  std::vector<EngineGroup*> out;
  for (const auto& group : groups_) out.push_back(group.get());
  return out;
}

EngineGroup* ServingEngine::ClaimMoveDestination(EngineGroup* from, int64_t request_id) {
  absl::MutexLock lock(&mu_);
  EngineGroup* to = Router::ChooseMoveDestination(Groups(), from);
  request_group_[request_id] = to != nullptr ? to : from;
  if (to != nullptr) to->ExpectArrival();  // the mover calls Arrived once it submitted there
  return to;
}

void ServingEngine::OnWorkerDeath(int32_t worker_id) {
  absl::MutexLock lock(&mu_);
  for (const auto& group : groups_) {
    if (group->HasWorker(worker_id)) {
      group->Fail(absl::UnavailableError(
          absl::StrCat("worker ", worker_id, " of engine group ", group->id(), " died")));
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

absl::StatusOr<int64_t> ServingEngine::Submit(GenerateInput input, UpdateCallback on_update) {
  auto seq = std::make_unique<Sequence>();
  Route<EngineGroup> route;
  {
    absl::MutexLock lock(&mu_);
    if (!admitting_) return absl::UnavailableError("the server is shutting down");
    RETURN_IF_ERROR(Validate(input));
    int64_t queued = 0;
    for (const auto& g : groups_) queued += g->alive() ? g->load() : 0;
    if (queued >= options_.max_queued_requests) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the server is at its limit of ", options_.max_queued_requests, " queued requests"));
    }
    route = router_.Choose(Groups(), input.prompt_ids);
    if (route.group == nullptr) return absl::UnavailableError("no live worker group can serve requests");
    seq->id = next_id_++;
    seq->seed = input.sampling.seed.has_value() ? *input.sampling.seed : seed_rng_();
    request_group_[seq->id] = route.group;
    route.group->ExpectArrival();
  }
  EngineGroup* group = route.group;
  // A busier group caches more of the prompt: move that prefix here unless
  // recomputing it is cheaper (or the move fails).
  bool migrated = false;
  if (route.donor != nullptr && route.donor_tokens > route.placement.cached_tokens()) {
    const int64_t extra = route.donor_tokens - route.placement.cached_tokens();
    if (router_.ShouldMigrate(BlocksFor(route.donor_tokens, group->block_size()), group->block_size())) {
      const BlockHold hold = route.donor->HoldPrefix(input.prompt_ids);
      migrated = !hold.blocks.empty() && mover_.MigrateBlocks(route.donor, hold, input.prompt_ids, group).ok();
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
  // The routing walk placed it, unless migrated blocks landed in another
  // replica of the group: then the group places it again.
  if (migrated) {
    group->Submit(std::move(seq));
  } else {
    group->Submit(std::move(seq), route.placement);
  }
  group->Arrived();
  return id;
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
    EngineGroup* destination = Router::ChooseMoveDestination(Groups(), group);
    if (destination == nullptr || destination == group) {
      return absl::FailedPreconditionError(
          absl::StrCat("no other engine group can take the requests of worker ", worker_id, "'s group"));
    }
  }
  std::cerr << "coordinator: draining engine group " << group->id() << " (worker " << worker_id << " asked)\n";
  mover_.Drain(group);
  return absl::OkStatus();
}

int ServingEngine::ConnectHandoffLinks() {
  std::vector<std::pair<WorkerInfo, WorkerInfo>> pairs;
  {
    absl::MutexLock lock(&mu_);
    std::vector<WorkerInfo> prefill_firsts;
    std::vector<std::vector<WorkerInfo>> decode_replicas;
    for (const auto& g : groups_) {
      if (!g->alive() || g->role() == GroupRole::kMixed) continue;
      for (int r = 0; r < g->num_replicas(); ++r) {
        std::vector<WorkerInfo> ranks = g->ReplicaWorkers(r);
        if (g->role() == GroupRole::kPrefill) {
          prefill_firsts.push_back(ranks[0]);
        } else {
          decode_replicas.push_back(std::move(ranks));
        }
      }
    }
    for (const std::vector<WorkerInfo>& ranks : decode_replicas) {
      for (const WorkerInfo& first : prefill_firsts) pairs.push_back({first, ranks[0]});
      for (size_t r = 1; r < ranks.size(); ++r) pairs.push_back({ranks[0], ranks[r]});
    }
  }
  std::vector<std::future<absl::StatusOr<bool>>> connects;
  for (const auto& [from, into] : pairs) {
    connects.push_back(std::async(std::launch::async, [this, &from, &into] { return transfer_.Connect(from, into); }));
  }
  int made = 0;
  for (size_t i = 0; i < connects.size(); ++i) {
    absl::StatusOr<bool> connected = connects[i].get();
    if (!connected.ok()) {
      std::cerr << "coordinator: KV link from worker " << pairs[i].first.id << " to worker " << pairs[i].second.id
                << " not made (" << connected.status() << "); the first transfer makes it\n";
    }
    made += connected.ok() && *connected;
  }
  return made;
}

absl::Status ServingEngine::Calibrate(int64_t bytes_per_block) {
  std::vector<EngineGroup*> alive;
  {
    absl::MutexLock lock(&mu_);
    // A group that spreads its KV over its head shards moves none.
    for (const auto& g : groups_) {
      if (g->alive() && !g->spreads_kv()) alive.push_back(g.get());
    }
  }
  if (alive.size() < 2) return absl::OkStatus();
  // Under disaggregation the path timed is a handoff's, prefill into decode
  // (over the link ConnectHandoffLinks made).
  auto order = [](const EngineGroup* g) {
    return g->role() == GroupRole::kPrefill ? 0 : g->role() == GroupRole::kMixed ? 1 : 2;
  };
  std::stable_sort(alive.begin(), alive.end(),
                   [&](const EngineGroup* x, const EngineGroup* y) { return order(x) < order(y); });
  EngineGroup* const a = alive.front();
  EngineGroup* const b = alive.back();
  // The link: a few blocks (their contents do not matter) from a to b.
  constexpr int64_t kBlocks = 8;
  ASSIGN_OR_RETURN(BlockHold from, a->Reserve(kBlocks));
  absl::StatusOr<BlockHold> to = b->Reserve(kBlocks);
  absl::Status copied = to.status();
  double transfer_s = 0;
  if (to.ok()) {
    const ReplicaBlocks src{a->ReplicaWorkers(from.replica), from.blocks};
    const ReplicaBlocks dst{b->ReplicaWorkers(to->replica), to->blocks};
    // The first copy makes the path (a NCCL link takes 0.6 s, a gRPC channel
    // milliseconds); the second, timed, is what later transfers cost.
    copied = transfer_.Copy(src, dst);
    const absl::Time start = absl::Now();
    if (copied.ok()) copied = transfer_.Copy(src, dst);
    transfer_s = absl::ToDoubleSeconds(absl::Now() - start);
  }
  a->Release(from);
  if (to.ok()) b->Release(*to);
  RETURN_IF_ERROR(copied);
  const double transfer_bytes_per_s = static_cast<double>(kBlocks * bytes_per_block) / transfer_s;
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
  const double prefill_tokens_per_s =
      static_cast<double>(input.prompt_ids.size()) / absl::ToDoubleSeconds(absl::Now() - prefill_start);
  router_.Calibrate(transfer_bytes_per_s, prefill_tokens_per_s, bytes_per_block);
  std::cerr << "coordinator: calibrated KV migration: link " << transfer_bytes_per_s / 1e6 << " MB/s, prefill "
            << prefill_tokens_per_s << " tokens/s, " << bytes_per_block << " bytes per block\n";
  return absl::OkStatus();
}

void ServingEngine::Cancel(int64_t request_id) {
  mover_.CancelIfMoving(request_id);
  absl::MutexLock lock(&mu_);
  auto it = request_group_.find(request_id);
  if (it != request_group_.end()) it->second->Cancel(request_id);
}

std::vector<GroupKvCapacity> ServingEngine::KvCapacity() const {
  absl::MutexLock lock(&mu_);
  std::vector<GroupKvCapacity> capacity;
  for (const auto& group : groups_) {
    if (!group->alive()) continue;
    capacity.push_back({group->id(), group->num_replicas(), group->num_blocks() * group->block_size()});
  }
  return capacity;
}

void ServingEngine::StopAdmitting() {
  absl::MutexLock lock(&mu_);  // no Submit is between its check and its queueing
  admitting_ = false;
}

int64_t ServingEngine::AwaitIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(
                           +[](std::map<int64_t, EngineGroup*>* requests) { return requests->empty(); },
                           &request_group_),
                       timeout);
  return static_cast<int64_t>(request_group_.size());
}

EngineHealth ServingEngine::Health() const {
  absl::MutexLock lock(&mu_);
  EngineHealth health;
  for (const auto& group : groups_) {
    if (group->alive()) ++health.serving_groups;
  }
  health.serving = health.serving_groups > 0;
  health.planned_groups = planned_groups_;
  health.shutting_down = !admitting_;
  if (registry_ != nullptr) {
    health.live_workers = registry_->num_live();
    health.total_workers = registry_->num_registered();
  }
  return health;
}

}  // namespace mlaserve
