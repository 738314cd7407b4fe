#include "coordinator/serving/scheduler.h"

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

bool Contains(const std::vector<int32_t>& ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

Scheduler::Scheduler(BlockManager& blocks, SchedulerOptions options) : blocks_(blocks), options_(std::move(options)) {}

void Scheduler::Add(std::unique_ptr<Sequence> seq) {
  by_id_[seq->id] = seq.get();
  waiting_.push_back(std::move(seq));
}

void Scheduler::ReleaseBlocks(Sequence* seq) {
  ReportBookkeepingError(blocks_.Release(seq->block_table));
  seq->block_table.clear();
  seq->num_computed = 0;
  seq->num_written = 0;
  if (seq->on_workers) released_.push_back(seq->id);
  seq->on_workers = false;
  seq->blocks_on_workers = 0;
}

std::vector<int64_t> Scheduler::TakeReleased() { return std::exchange(released_, {}); }

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
    if (seq->last_sample_launched) {
      ++i;
      continue;
    }
    const auto [n, split] = Chunk(*seq, seq->num_computed, budget);
    if (!Reserve(seq, n)) break;  // seq was the last one and got preempted
    step.push_back(
        {seq, seq->num_computed, n, seq->num_computed + n == static_cast<int64_t>(seq->tokens.size()), split});
    budget -= std::min(n, budget);
    ++i;
  }
  while (budget > 0 && static_cast<int64_t>(running_.size()) < options_.max_num_seqs && !waiting_.empty()) {
    const int64_t before = budget;
    if (!Admit(budget, &step)) break;
    budget -= std::min(step.back().num_tokens, budget);
    if (budget == before) break;
  }
  for (const ScheduledSequence& s : step) Launch(s);
  return step;
}

bool Scheduler::Admit(int64_t budget, std::vector<ScheduledSequence>* step) {
  Sequence* seq = waiting_.front().get();
  // A preempted sequence is recomputed from known tokens only: FCFS, the
  // head waits for its sample in flight, nobody overtakes it.
  if (seq->pending_samples > 0) return false;
  const int64_t total = static_cast<int64_t>(seq->tokens.size());
  // At least one token is computed so that the step yields logits to sample.
  PrefixMatch match = blocks_.Match(seq->tokens, total - 1, seq->prefix_match);
  seq->prefix_match = match;  // a head that waits for room resumes from here next step
  const auto [n, split] = Chunk(*seq, match.num_tokens, budget);
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
  step->push_back({seq, match.num_tokens, n, match.num_tokens + n == total, split});
  return true;
}

std::pair<int64_t, bool> Scheduler::Chunk(const Sequence& seq, int64_t begin, int64_t budget) const {
  const int64_t remaining = static_cast<int64_t>(seq.tokens.size()) - begin;
  const int replicas = options_.context_parallel_replicas;
  if (SplitsPrompts(replicas, options_.context_parallel_min_tokens) && options_.can_split != nullptr &&
      remaining >= options_.context_parallel_min_tokens && budget >= replicas) {
    const int64_t n = std::min(remaining, budget * replicas);
    if (n >= replicas && options_.can_split(seq, begin, n)) return {n, true};
  }
  return {std::min(remaining, budget), false};
}

bool Scheduler::AtLengthLimit(const Sequence& seq) const {
  return seq.num_output() >= seq.sampling.max_tokens ||
         static_cast<int64_t>(seq.tokens.size()) >= options_.max_model_len;
}

void Scheduler::Launch(const ScheduledSequence& s) {
  Sequence& seq = *s.seq;
  seq.num_computed += s.num_tokens;
  CacheKnown(seq);
  if (!s.sample) return;
  seq.tokens.push_back(kPendingToken);
  ++seq.pending_samples;
  seq.last_sample_launched = AtLengthLimit(seq) || (options_.prefill_only && seq.num_output() == 1);
}

void Scheduler::CacheKnown(const Sequence& seq) {
  const int64_t known = std::min(seq.num_computed, seq.num_known());
  ReportBookkeepingError(blocks_.Cache(absl::MakeConstSpan(seq.tokens).subspan(0, known), seq.block_table));
}

FinishReason Scheduler::Apply(Sequence& seq, int64_t position, int32_t token, std::string* text) {
  seq.tokens[position] = token;
  --seq.pending_samples;
  seq.num_written = position;
  // Samples resolve in launch order, so this was the first placeholder and
  // everything before it is known now.
  const int64_t known_before = position;
  if (seq.num_computed > known_before) CacheKnown(seq);
  if (Contains(seq.sampling.stop_token_ids, token) ||
      (!seq.sampling.ignore_eos && Contains(options_.eos_token_ids, token))) {
    if (seq.detokenizer != nullptr) *text = seq.detokenizer->Flush();  // the stop token's text is not output
    return FinishReason::kStop;
  }
  if (seq.detokenizer != nullptr) {
    *text = seq.detokenizer->Append(token);
    if (seq.detokenizer->stopped()) return FinishReason::kStop;
  }
  // Placeholders after this one are the sequence's speculative steps; the
  // length counts the output up to this token.
  const int64_t output = position + 1 - seq.prompt_len;
  if (output >= seq.sampling.max_tokens || position + 1 >= options_.max_model_len) {
    if (seq.detokenizer != nullptr) *text += seq.detokenizer->Flush();
    return FinishReason::kLength;
  }
  return FinishReason::kNone;
}

Postprocessed Scheduler::Postprocess(absl::Span<const SampleSlot> slots, absl::Span<const int32_t> tokens) {
  Postprocessed out;
  for (size_t row = 0; row < slots.size(); ++row) {
    auto it = by_id_.find(slots[row].request_id);
    if (it == by_id_.end()) continue;
    Sequence& seq = *it->second;
    const int64_t position = slots[row].position;
    if (position >= static_cast<int64_t>(seq.tokens.size()) || seq.tokens[position] != kPendingToken) continue;
    SampleResult result{static_cast<int64_t>(row), &seq, tokens[row]};
    result.reason = Apply(seq, position, tokens[row], &result.text);
    if (result.reason != FinishReason::kNone) {
      seq.finish_reason = result.reason;
      out.finished.push_back(Remove(seq.id));
    }
    out.samples.push_back(std::move(result));
  }
  return out;
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
  if (seq != nullptr) {
    by_id_.erase(id);
    ReleaseBlocks(seq.get());
    // What leaves is its known tokens: a sample still in flight will be
    // skipped, so the sequence ends, or resumes elsewhere, before it.
    seq->tokens.resize(seq->num_known());
    seq->pending_samples = 0;
    seq->last_sample_launched = false;
  }
  return seq;
}

std::vector<std::unique_ptr<Sequence>> Scheduler::RemoveAll() {
  std::vector<std::unique_ptr<Sequence>> all;
  for (auto& s : running_) all.push_back(std::move(s));
  for (auto& s : waiting_) all.push_back(std::move(s));
  running_.clear();
  waiting_.clear();
  by_id_.clear();
  for (auto& s : all) {
    ReleaseBlocks(s.get());
    s->tokens.resize(s->num_known());
    s->pending_samples = 0;
  }
  return all;
}

}  // namespace mlaserve
