#include "coordinator/scheduler.h"

#include <algorithm>
#include <iostream>

#include "worker/kv_cache.h"

namespace mlaserve {
namespace {

// The block manager refuses inconsistent bookkeeping (double release, unknown
// blocks). That is a scheduler bug; report it loudly and keep serving.
void ReportBookkeepingError(const absl::Status& status) {
  if (!status.ok()) std::cerr << "scheduler: internal block bookkeeping error: " << status << "\n";
}

}  // namespace

Scheduler::Scheduler(BlockManager& blocks, SchedulerOptions options) : blocks_(blocks), options_(options) {}

void Scheduler::Add(std::unique_ptr<Sequence> seq) { waiting_.push_back(std::move(seq)); }

void Scheduler::ReleaseBlocks(Sequence* seq) {
  ReportBookkeepingError(blocks_.Release(seq->block_table));
  seq->block_table.clear();
  seq->num_computed = 0;
}

void Scheduler::Preempt(Sequence* seq) {
  auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& s) { return s.get() == seq; });
  ReleaseBlocks(seq);
  waiting_.push_front(std::move(*it));
  running_.erase(it);
  ++num_preemptions_;
}

bool Scheduler::Reserve(Sequence* seq, int64_t num_tokens) {
  const int64_t needed =
      BlocksFor(seq->num_computed + num_tokens, blocks_.block_size()) - static_cast<int64_t>(seq->block_table.size());
  if (needed <= 0) return true;
  while (!blocks_.CanAllocate(needed)) {
    Sequence* victim = running_.back().get();
    Preempt(victim);
    if (victim == seq) return false;
  }
  absl::StatusOr<std::vector<int32_t>> fresh = blocks_.Allocate(needed);
  if (!fresh.ok()) return false;  // CanAllocate said yes: unreachable unless the manager is broken
  seq->block_table.insert(seq->block_table.end(), fresh->begin(), fresh->end());
  return true;
}

std::vector<ScheduledSequence> Scheduler::Schedule() {
  std::vector<ScheduledSequence> step;
  int64_t budget = options_.max_batched_tokens;
  // Running sequences first, in admission order; preemption takes from the back.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* seq = running_[i].get();
    const int64_t n = std::min(seq->num_pending(), budget);
    if (!Reserve(seq, n)) break;  // seq was the last one and got preempted
    step.push_back({seq, n, seq->num_computed + n == static_cast<int64_t>(seq->tokens.size())});
    budget -= n;
    ++i;
  }
  while (budget > 0 && static_cast<int64_t>(running_.size()) < options_.max_num_seqs && !waiting_.empty()) {
    const int64_t before = budget;
    if (!Admit(budget, &step)) break;
    budget -= step.back().num_tokens;
    if (budget == before) break;
  }
  return step;
}

bool Scheduler::Admit(int64_t budget, std::vector<ScheduledSequence>* step) {
  Sequence* seq = waiting_.front().get();
  const int64_t total = static_cast<int64_t>(seq->tokens.size());
  // At least one token is computed so that the step yields logits to sample.
  PrefixMatch match = blocks_.Match(seq->tokens, total - 1);
  const int64_t n = std::min(total - match.num_tokens, budget);
  const int64_t fresh = BlocksFor(match.num_tokens + n, blocks_.block_size()) - static_cast<int64_t>(match.blocks.size());
  if (!blocks_.CanAllocate(fresh)) return false;  // FCFS: the head waits, nobody overtakes it
  // Acquire before allocating so that eviction cannot take the matched blocks.
  if (absl::Status acquired = blocks_.Acquire(match.blocks); !acquired.ok()) {
    ReportBookkeepingError(acquired);
    return false;
  }
  absl::StatusOr<std::vector<int32_t>> blocks = blocks_.Allocate(fresh);
  if (!blocks.ok()) {
    ReportBookkeepingError(blocks_.Release(match.blocks));
    return false;
  }
  seq->block_table = match.blocks;
  seq->block_table.insert(seq->block_table.end(), blocks->begin(), blocks->end());
  seq->num_computed = match.num_tokens;
  if (!seq->admitted_before) seq->cached_prompt_tokens = match.num_tokens;
  seq->admitted_before = true;
  running_.push_back(std::move(waiting_.front()));
  waiting_.pop_front();
  step->push_back({seq, n, match.num_tokens + n == total});
  return true;
}

void Scheduler::Advance(const std::vector<ScheduledSequence>& step) {
  for (const ScheduledSequence& s : step) {
    s.seq->num_computed += s.num_tokens;
    ReportBookkeepingError(
        blocks_.Cache(absl::MakeConstSpan(s.seq->tokens).subspan(0, s.seq->num_computed), s.seq->block_table));
  }
}

std::vector<Sequence*> Scheduler::sequences() const {
  std::vector<Sequence*> out;
  for (const auto& s : running_) out.push_back(s.get());
  for (const auto& s : waiting_) out.push_back(s.get());
  return out;
}

std::unique_ptr<Sequence> Scheduler::Remove(int64_t id) {
  auto matches = [id](const std::unique_ptr<Sequence>& s) { return s->id == id; };
  std::unique_ptr<Sequence> seq;
  if (auto it = std::find_if(running_.begin(), running_.end(), matches); it != running_.end()) {
    seq = std::move(*it);
    running_.erase(it);
  } else if (auto it = std::find_if(waiting_.begin(), waiting_.end(), matches); it != waiting_.end()) {
    seq = std::move(*it);
    waiting_.erase(it);
  }
  if (seq != nullptr) ReleaseBlocks(seq.get());
  return seq;
}

std::vector<std::unique_ptr<Sequence>> Scheduler::RemoveAll() {
  std::vector<std::unique_ptr<Sequence>> all;
  for (auto& s : running_) all.push_back(std::move(s));
  for (auto& s : waiting_) all.push_back(std::move(s));
  running_.clear();
  waiting_.clear();
  for (auto& s : all) ReleaseBlocks(s.get());
  return all;
}

}  // namespace mlaserve
