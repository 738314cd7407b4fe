#include "coordinator/serving_engine.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/kv_cache.h"

namespace mlaserve {

ServingEngine::ServingEngine(const Tokenizer& tokenizer, const ModelConfig& config, ServingOptions options,
                             ServingMetrics& metrics, const WorkerRegistry* registry)
    : tokenizer_(tokenizer), config_(config), options_(std::move(options)), metrics_(metrics), registry_(registry) {}

ServingEngine::~ServingEngine() {
  std::vector<std::unique_ptr<EngineGroup>> groups;
  {
    absl::MutexLock lock(&mu_);
    groups.swap(groups_);
  }
  groups.clear();  // joins the loops, which end their requests with kAbort
}

void ServingEngine::AddGroup(std::unique_ptr<EngineGroup> group) {
  absl::MutexLock lock(&mu_);
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

EngineGroup* ServingEngine::Route(const std::vector<int32_t>& prompt) {
  EngineGroup* least_loaded = nullptr;
  EngineGroup* best_cached = nullptr;
  int64_t min_load = std::numeric_limits<int64_t>::max(), best_cached_tokens = 0, best_cached_load = 0;
  for (const auto& group : groups_) {
    if (!group->alive()) continue;
    const int64_t load = group->load();
    if (load < min_load) {
      min_load = load;
      least_loaded = group.get();
    }
    const int64_t cached = group->CachedPrefixTokens(prompt);
    if (cached > best_cached_tokens || (cached == best_cached_tokens && best_cached != nullptr && load < best_cached_load)) {
      best_cached_tokens = cached;
      best_cached_load = load;
      best_cached = group.get();
    }
  }
  if (best_cached != nullptr && best_cached_tokens > 0 && best_cached_load <= min_load + options_.cache_affinity_slack) {
    return best_cached;
  }
  return least_loaded;
}

absl::StatusOr<int64_t> ServingEngine::Submit(GenerateInput input, UpdateCallback on_update) {
  auto seq = std::make_unique<Sequence>();
  EngineGroup* group = nullptr;
  {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(Validate(input));
    int64_t queued = 0;
    for (const auto& g : groups_) queued += g->alive() ? g->load() : 0;
    if (queued >= options_.max_queued_requests) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the server is at its limit of ", options_.max_queued_requests, " queued requests"));
    }
    group = Route(input.prompt_ids);
    if (group == nullptr) return absl::UnavailableError("no live worker group can serve requests");
    seq->id = next_id_++;
    seq->seed = input.sampling.seed.has_value() ? *input.sampling.seed : seed_rng_();
    request_group_[seq->id] = group;
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

void ServingEngine::Cancel(int64_t request_id) {
  absl::MutexLock lock(&mu_);
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
