#include "simulator/cluster_simulator.h"

#include <algorithm>
#include <deque>
#include <queue>
#include <random>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "coordinator/serving/context_parallel.h"
#include "coordinator/serving/replica.h"
#include "coordinator/serving/sequence.h"
#include "coordinator/serving/step_trace.h"

namespace mlaserve::sim {
namespace {

// A step launched on a simulated group: where its samples go, per replica.
struct LaunchedStep {
  std::vector<std::vector<SampleSlot>> slots;
  double end = 0;  // when its samples come back
};

// One engine group: the coordinator's replicas (block manager, prefix index,
// scheduler) and the steps launched on its simulated workers.
class SimGroup {
 public:
  SimGroup(int index, const GroupSpec& spec, int64_t slack) : index_(index), spec_(spec), slack_(slack) {
    SchedulerOptions options = spec.scheduler;
    options.prefill_only = spec.role == GroupRole::kPrefill;
    options.context_parallel_replicas = spec.dp_attention;
    options.can_split = [this](const Sequence& seq, int64_t begin, int64_t tokens) {
      return context_parallel_.CanSplit(replicas_, seq, begin, tokens);
    };
    for (int r = 0; r < spec.dp_attention; ++r) {
      replicas_.push_back(std::make_unique<Replica>(spec.num_blocks, spec.block_size, options));
    }
  }

  // What Router asks of a group.
  bool alive() const { return true; }
  GroupRole role() const { return spec_.role; }
  int64_t load() const {
    int64_t total = arriving_;
    for (const auto& r : replicas_) total += r->load();
    return total;
  }
  // As EngineGroup's: a request moving here counts in load() until submitted.
  void ExpectArrival() { ++arriving_; }
  void Arrived() { --arriving_; }
  Placement Place(const std::vector<int32_t>& tokens) { return BestReplica(replicas_, tokens, slack_); }

  int index() const { return index_; }
  const GroupSpec& spec() const { return spec_; }
  Replica& replica(int r) { return *replicas_[r]; }
  int num_replicas() const { return static_cast<int>(replicas_.size()); }
  std::deque<LaunchedStep>& launched() { return launched_; }

  void Submit(std::unique_ptr<Sequence> seq, Placement placement) {
    seq->replica = placement.replica;
    seq->prefix_match = std::move(placement.prefix);
    replicas_[seq->replica]->scheduler.Add(std::move(seq));
  }

  // Schedules the next step on every replica; its cost, or nullopt when
  // nothing can run.
  std::optional<std::pair<LaunchedStep, double>> ScheduleStep() {
    LaunchedStep step;
    step.slots.resize(replicas_.size());
    std::vector<std::vector<ScheduledSequence>> scheduled(replicas_.size());
    for (size_t r = 0; r < replicas_.size(); ++r) {
      scheduled[r] = replicas_[r]->scheduler.Schedule();
      for (const ScheduledSequence& s : scheduled[r]) {
        if (s.sample) step.slots[r].push_back({s.seq->id, s.begin + s.num_tokens});
      }
      replicas_[r]->scheduler.TakeReleased();
    }
    // Long prompts split over the replicas, as the engine group splits them
    // (the workers' copies are what the message is for: only its chunks count here).
    internal::v1::StepRequest message;
    context_parallel_.Plan(replicas_, scheduled, &message);
    context_parallel_.TakeReleased();
    StepShape shape;
    for (const std::vector<ScheduledSequence>& computed : ComputedByReplica(scheduled, message)) {
      shape.AddReplica(computed);
    }
    if (shape.sequences == 0) return std::nullopt;
    return std::make_pair(std::move(step), spec_.cost->Seconds(shape));
  }

  int64_t preemptions() const {
    int64_t total = 0;
    for (const auto& r : replicas_) total += r->scheduler.num_preemptions();
    return total;
  }

 private:
  const int index_;
  const GroupSpec spec_;
  const int64_t slack_;  // between replicas, as the router's between groups
  std::vector<std::unique_ptr<Replica>> replicas_;
  ContextParallel context_parallel_;  // holds blocks of the replicas: declared after them
  std::deque<LaunchedStep> launched_;
  int64_t arriving_ = 0;
};

// A request in flight, as its client sees it.
struct ClientRequest {
  int64_t session = 0;
  int64_t turn = 0;
  double sent = 0;
  double last_token = 0;
  bench::RequestResult result;
};

class Simulation {
 public:
  Simulation(const ClusterSpec& cluster, const LoadSpec& load)
      : cluster_(cluster), load_(load), router_(cluster.router) {
    for (size_t g = 0; g < cluster.groups.size(); ++g) {
      groups_.push_back(std::make_unique<SimGroup>(static_cast<int>(g), cluster.groups[g], cluster.router.cache_affinity_slack));
      pointers_.push_back(groups_.back().get());
    }
    if (cluster.prefill_tokens_per_s > 0 && cluster.kv_bytes_per_block > 0) {
      router_.Calibrate(cluster.kv_bytes_per_s, cluster.prefill_tokens_per_s, cluster.kv_bytes_per_block);
    }
  }

  absl::StatusOr<SimulationResult> Run() {
    StartSessions();
    while (!events_.empty()) {
      const Event e = events_.top();
      events_.pop();
      now_ = e.time;
      switch (e.kind) {
        case Event::kSend:
          Send(e.index, e.turn);
          break;
        case Event::kStepDone:
          StepDone(*groups_[e.index]);
          break;
        case Event::kKvArrived:
          KvArrived(e.index, e.turn);
          break;
      }
    }
    if (!requests_.empty()) {
      return absl::InternalError(absl::StrCat(requests_.size(),
                                              " requests never finished: no group could run them (KV pools too "
                                              "small for their prompts?)"));
    }
    for (const auto& g : groups_) result_.preemptions += g->preemptions();
    result_.duration_s = now_;
    return std::move(result_);
  }

 private:
  struct Event {
    enum Kind { kSend, kStepDone, kKvArrived } kind;
    double time = 0;
    uint64_t order = 0;
    int64_t index = 0;  // session (kSend), group (kStepDone, kKvArrived)
    int64_t turn = 0;   // turn (kSend), request id (kKvArrived)
    bool operator>(const Event& o) const { return time != o.time ? time > o.time : order > o.order; }
  };
  struct Arriving {
    std::unique_ptr<Sequence> seq;
    int64_t kv_tokens = 0;
  };

  void Push(Event::Kind kind, double time, int64_t index, int64_t turn = 0) {
    events_.push({kind, time, next_order_++, index, turn});
  }

  void StartSessions() {
    const int64_t sessions = static_cast<int64_t>(load_.sessions.size());
    if (load_.concurrency > 0) {
      for (int64_t i = 0; i < std::min(load_.concurrency, sessions); ++i) Push(Event::kSend, 0, next_session_++);
      return;
    }
    std::mt19937_64 rng(load_.seed);
    std::exponential_distribution<double> gap(std::isinf(load_.request_rate) ? 1.0 : load_.request_rate);
    double t = 0;
    for (int64_t i = 0; i < sessions; ++i) {
      Push(Event::kSend, t, i);
      if (!std::isinf(load_.request_rate)) t += gap(rng);
    }
    next_session_ = sessions;
  }

  void Send(int64_t session, int64_t turn) {
    const bench::BenchRequest& request = load_.sessions[session].turns[turn];
    auto seq = std::make_unique<Sequence>();
    seq->id = next_id_++;
    seq->tokens = request.prompt;
    seq->prompt_len = static_cast<int64_t>(request.prompt.size());
    seq->sampling.max_tokens = static_cast<int32_t>(request.max_tokens);
    seq->sampling.ignore_eos = true;
    ClientRequest& client = requests_[seq->id];
    client.session = session;
    client.turn = turn;
    client.sent = now_;
    client.result.prompt_tokens = seq->prompt_len;
    Route<SimGroup> route = router_.Choose(pointers_, seq->tokens);
    if (route.donor != nullptr) {
      const int64_t block_size = route.group->spec().block_size;
      const int64_t blocks = route.donor_tokens / block_size;
      if (blocks > 0 && router_.ShouldMigrate(blocks, block_size)) {
        ++result_.migrations;
        result_.migrated_tokens += blocks * block_size;
        Move(std::move(seq), route.group, blocks * block_size);
        return;
      }
    }
    Admit(*route.group, std::move(seq), std::move(route.placement));
  }

  void Admit(SimGroup& group, std::unique_ptr<Sequence> seq, Placement placement) {
    group.Submit(std::move(seq), std::move(placement));
    if (group.launched().empty()) Launch(group);
  }

  // The KV of `seq`'s first `kv_tokens` tokens (whole blocks) moves to `to`;
  // the sequence follows it there.
  void Move(std::unique_ptr<Sequence> seq, SimGroup* to, int64_t kv_tokens) {
    const int64_t blocks = kv_tokens / to->spec().block_size;
    const int64_t bytes = blocks * cluster_.kv_bytes_per_block;
    result_.moved_bytes += bytes;
    const double arrives = now_ + cluster_.kv_latency_s + static_cast<double>(bytes) / cluster_.kv_bytes_per_s;
    const int64_t id = seq->id;
    to->ExpectArrival();
    arriving_[id] = {std::move(seq), blocks * to->spec().block_size};
    Push(Event::kKvArrived, arrives, to->index(), id);
  }

  // Enters the moved KV into the destination's prefix index (where the
  // placement puts the sequence) and submits it; without room for the KV, it
  // is recomputed there.
  void KvArrived(int64_t group_index, int64_t id) {
    SimGroup& group = *groups_[group_index];
    auto it = arriving_.find(id);
    Arriving arriving = std::move(it->second);
    arriving_.erase(it);
    Sequence& seq = *arriving.seq;
    const int64_t block_size = group.spec().block_size;
    Placement placement = group.Place(seq.tokens);
    const int64_t cached = placement.cached_tokens();
    if (arriving.kv_tokens > cached) {
      Replica& replica = group.replica(placement.replica);
      const std::vector<int32_t> prefix(seq.tokens.begin(), seq.tokens.begin() + arriving.kv_tokens);
      absl::StatusOr<std::vector<int32_t>> fresh =
          replica.blocks.Allocate((arriving.kv_tokens - cached) / block_size);
      if (fresh.ok() && replica.blocks.Acquire(placement.prefix.blocks).ok()) {
        std::vector<int32_t> table = placement.prefix.blocks;
        table.insert(table.end(), fresh->begin(), fresh->end());
        replica.blocks.Cache(prefix, table).IgnoreError();
        replica.blocks.Release(table).IgnoreError();
        placement = group.Place(seq.tokens);
      } else if (fresh.ok()) {
        replica.blocks.Release(*fresh).IgnoreError();
      }
    }
    Admit(group, std::move(arriving.seq), std::move(placement));
    group.Arrived();
  }

  // Keeps two steps launched while there is work (EngineGroup's overlap):
  // one running, the next queued behind it.
  void Launch(SimGroup& group) {
    std::deque<LaunchedStep>& launched = group.launched();
    while (launched.size() < 2) {
      auto step = group.ScheduleStep();
      if (!step.has_value()) return;
      const double start = launched.empty() ? now_ : launched.back().end;
      step->first.end = start + step->second;
      ++result_.steps;
      if (launched.empty()) Push(Event::kStepDone, step->first.end, group.index());
      launched.push_back(std::move(step->first));
    }
  }

  void StepDone(SimGroup& group) {
    LaunchedStep step = std::move(group.launched().front());
    group.launched().pop_front();
    if (!group.launched().empty()) Push(Event::kStepDone, group.launched().front().end, group.index());
    for (int r = 0; r < group.num_replicas(); ++r) {
      const std::vector<SampleSlot>& slots = step.slots[r];
      std::vector<int32_t> tokens;
      tokens.reserve(slots.size());
      // Tokens unlikely to match another request's, so that outputs share no
      // prefix blocks by chance.
      for (const SampleSlot& slot : slots) tokens.push_back(static_cast<int32_t>(1000 + (slot.request_id * 7919 + slot.position) % 100000));
      Postprocessed done = group.replica(r).scheduler.Postprocess(slots, tokens);
      std::vector<std::pair<std::unique_ptr<Sequence>, int64_t>> moving;  // with the tokens whose KV moves
      for (SampleResult& sample : done.samples) {
        Sequence& seq = *sample.seq;
        ClientRequest& client = requests_[seq.id];
        if (seq.num_known_output() == 1) {
          client.result.ttft_ms = (now_ - client.sent) * 1e3;
        } else {
          client.result.itl_ms.push_back((now_ - client.last_token) * 1e3);
        }
        client.last_token = now_;
        ++client.result.choice_events;
        ++client.result.completion_tokens;
        if (sample.reason == FinishReason::kNone && group.role() == GroupRole::kPrefill &&
            seq.num_known_output() == 1) {
          const int64_t kv_tokens = seq.num_computed;  // Remove resets it, as for a preemption
          moving.emplace_back(group.replica(r).scheduler.Remove(seq.id), kv_tokens);
        }
      }
      for (auto& seq : done.finished) Finish(*seq);
      for (auto& [seq, kv_tokens] : moving) HandOff(group, std::move(seq), kv_tokens);
    }
    Launch(group);
  }

  // A prefill group's sequence goes on in a decode group with the KV of its
  // first `kv_tokens` tokens.
  void HandOff(SimGroup& from, std::unique_ptr<Sequence> seq, int64_t kv_tokens) {
    SimGroup* to = Router::ChooseMoveDestination(pointers_, &from);
    ++result_.handoffs;
    if (to == &from) {
      Placement placement = from.Place(seq->tokens);
      Admit(from, std::move(seq), std::move(placement));
      return;
    }
    Move(std::move(seq), to, kv_tokens);
  }

  void Finish(const Sequence& seq) {
    auto it = requests_.find(seq.id);
    ClientRequest client = std::move(it->second);
    requests_.erase(it);
    client.result.success = true;
    client.result.e2e_ms = (now_ - client.sent) * 1e3;
    client.result.cached_tokens = seq.cached_prompt_tokens;
    result_.requests.push_back(std::move(client.result));
    // The client's next turn, or (closed loop) its next session.
    if (client.turn + 1 < static_cast<int64_t>(load_.sessions[client.session].turns.size())) {
      Push(Event::kSend, now_, client.session, client.turn + 1);
    } else if (load_.concurrency > 0 && next_session_ < static_cast<int64_t>(load_.sessions.size())) {
      Push(Event::kSend, now_, next_session_++);
    }
  }

  const ClusterSpec& cluster_;
  const LoadSpec& load_;
  Router router_;
  std::vector<std::unique_ptr<SimGroup>> groups_;
  std::vector<SimGroup*> pointers_;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events_;
  uint64_t next_order_ = 0;
  double now_ = 0;
  int64_t next_id_ = 0;
  int64_t next_session_ = 0;
  absl::flat_hash_map<int64_t, ClientRequest> requests_;
  absl::flat_hash_map<int64_t, Arriving> arriving_;
  SimulationResult result_;
};

absl::Status Validate(const ClusterSpec& cluster, const LoadSpec& load) {
  if (cluster.groups.empty()) return absl::InvalidArgumentError("the cluster has no engine group");
  if (cluster.kv_bytes_per_s <= 0) return absl::InvalidArgumentError("the KV link's rate must be positive");
  int64_t smallest_pool = std::numeric_limits<int64_t>::max();
  bool decodes = false;
  for (const GroupSpec& g : cluster.groups) {
    if (g.cost == nullptr) return absl::InvalidArgumentError("an engine group has no step cost");
    if (g.num_blocks <= 0 || g.block_size <= 0 || g.dp_attention <= 0) {
      return absl::InvalidArgumentError("an engine group needs KV blocks, a block size and a replica");
    }
    smallest_pool = std::min(smallest_pool, g.num_blocks * g.block_size);
    decodes = decodes || g.role != GroupRole::kPrefill;
  }
  if (!decodes) return absl::InvalidArgumentError("the cluster has only prefill groups");
  for (const bench::Session& session : load.sessions) {
    for (const bench::BenchRequest& r : session.turns) {
      if (static_cast<int64_t>(r.prompt.size()) + r.max_tokens > smallest_pool) {
        return absl::InvalidArgumentError(absl::StrCat("a request of ", r.prompt.size(), " + ", r.max_tokens,
                                                       " tokens does not fit a KV pool of ", smallest_pool));
      }
      if (r.prompt.empty() || r.max_tokens < 1) return absl::InvalidArgumentError("an empty request");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SimulationResult> Simulate(const ClusterSpec& cluster, const LoadSpec& load) {
  if (absl::Status valid = Validate(cluster, load); !valid.ok()) return valid;
  Simulation simulation(cluster, load);
  return simulation.Run();
}

}  // namespace mlaserve::sim
