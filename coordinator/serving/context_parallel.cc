#include "coordinator/serving/context_parallel.h"

#include <algorithm>
#include <iostream>

#include "absl/container/flat_hash_set.h"
#include "worker/kv_cache.h"

namespace mlaserve {
namespace {

// As the scheduler's: bookkeeping the block manager refuses is a bug here;
// report it loudly and keep serving.
void ReportBookkeepingError(const absl::Status& status) {
  if (!status.ok()) std::cerr << "context parallel: internal block bookkeeping error: " << status << "\n";
}

}  // namespace

std::vector<std::vector<ScheduledSequence>> ComputedByReplica(
    absl::Span<const std::vector<ScheduledSequence>> scheduled, const internal::v1::StepRequest& step) {
  std::vector<std::vector<ScheduledSequence>> out(scheduled.begin(), scheduled.end());
  for (const internal::v1::ContextParallelChunk& chunk : step.context_parallel()) {
    const int home = chunk.replicas(chunk.replicas_size() - 1);
    auto whole = std::find_if(out[home].begin(), out[home].end(),
                              [&](const ScheduledSequence& s) { return s.seq->id == chunk.request_id(); });
    const ScheduledSequence scheduled_chunk = *whole;
    out[home].erase(whole);
    int64_t begin = scheduled_chunk.begin;
    for (int j = 0; j < chunk.replicas_size(); ++j) {
      const bool last = j + 1 == chunk.replicas_size();
      out[chunk.replicas(j)].push_back({.seq = scheduled_chunk.seq,
                                        .begin = begin,
                                        .num_tokens = chunk.slice_tokens(j),
                                        .sample = last && scheduled_chunk.sample});
      begin += chunk.slice_tokens(j);
    }
  }
  return out;
}

void ContextParallel::Plan(absl::Span<const std::unique_ptr<Replica>> replicas,
                           absl::Span<const std::vector<ScheduledSequence>> scheduled,
                           internal::v1::StepRequest* step) {
  absl::flat_hash_set<int64_t> split;
  for (size_t home = 0; home < scheduled.size(); ++home) {
    for (const ScheduledSequence& s : scheduled[home]) {
      if (!s.context_parallel || !Extend(replicas, static_cast<int>(home), s)) continue;
      AddToStep(static_cast<int>(home), s, copies_.at(s.seq->id), step);
      split.insert(s.seq->id);
    }
  }
  std::vector<int64_t> done;
  for (const auto& [id, copies] : copies_) {
    if (!split.contains(id)) done.push_back(id);
  }
  for (int64_t id : done) Release(replicas, id);
}

bool ContextParallel::CanSplit(absl::Span<const std::unique_ptr<Replica>> replicas, const Sequence& seq,
                               int64_t begin, int64_t tokens) {
  // Copies start when a sequence is admitted (from its cached prefix) or
  // never: a running one's other replicas would have to cache exactly what it
  // computed alone, and asking would walk their prefix indexes every step.
  if (!copies_.contains(seq.id) && seq.num_computed > 0) return false;
  return Feasible(replicas, seq, begin, tokens);
}

bool ContextParallel::Feasible(absl::Span<const std::unique_ptr<Replica>> replicas, const Sequence& seq,
                               int64_t begin, int64_t tokens) {
  const int num_replicas = static_cast<int>(replicas.size()), home = seq.replica;
  const int64_t end = begin + tokens;
  if (num_replicas < 2 || tokens < num_replicas || end > static_cast<int64_t>(seq.tokens.size())) return false;
  for (int64_t t = begin; t < end; ++t) {
    if (seq.tokens[t] == kPendingToken) return false;
  }
  auto it = copies_.find(seq.id);
  if (it != copies_.end() && (it->second.home != home || it->second.tokens != begin)) return false;
  for (int r = 0; r < num_replicas; ++r) {
    if (r == home) continue;
    BlockManager& blocks = replicas[r]->blocks;
    int64_t have = 0;
    if (it != copies_.end()) {
      have = static_cast<int64_t>(it->second.copies[r].block_table.size());
    } else {
      const PrefixMatch match = blocks.Match(seq.tokens, begin);
      if (match.num_tokens != begin) return false;
      have = static_cast<int64_t>(match.blocks.size());
    }
    if (!blocks.CanAllocate(std::max<int64_t>(0, BlocksFor(end, blocks.block_size()) - have))) return false;
  }
  return true;
}

bool ContextParallel::Extend(absl::Span<const std::unique_ptr<Replica>> replicas, int home,
                             const ScheduledSequence& s) {
  const Sequence& seq = *s.seq;
  const int64_t end = s.begin + s.num_tokens;
  const int num_replicas = static_cast<int>(replicas.size());
  if (home != seq.replica || !Feasible(replicas, seq, s.begin, s.num_tokens)) return false;
  auto it = copies_.find(seq.id);
  const bool fresh = it == copies_.end();
  // A fresh copy adopts its replica's cached prefix of the tokens before the
  // chunk (CanSplit found all of them). Matched blocks are acquired before
  // anything is allocated, so that allocation cannot evict them; room is
  // checked again with them held.
  std::vector<std::vector<int32_t>> adopted(num_replicas);
  std::vector<int64_t> needed(num_replicas, 0);
  bool fits = true;
  for (int r = 0; r < num_replicas && fits; ++r) {
    if (r == home) continue;
    BlockManager& blocks = replicas[r]->blocks;
    int64_t have = 0;
    if (fresh) {
      PrefixMatch match = blocks.Match(seq.tokens, s.begin);
      if (match.num_tokens != s.begin || !blocks.Acquire(match.blocks).ok()) {
        fits = false;
        break;
      }
      adopted[r] = std::move(match.blocks);
      have = static_cast<int64_t>(adopted[r].size());
    } else {
      have = static_cast<int64_t>(it->second.copies[r].block_table.size());
    }
    needed[r] = std::max<int64_t>(0, BlocksFor(end, blocks.block_size()) - have);
    fits = blocks.CanAllocate(needed[r]);
  }
  if (!fits) {
    for (int r = 0; r < num_replicas; ++r) ReportBookkeepingError(replicas[r]->blocks.Release(adopted[r]));
    return false;
  }
  if (fresh) {
    it = copies_.emplace(seq.id, Copies{.home = home, .tokens = s.begin}).first;
    it->second.copies.resize(num_replicas);
    for (int r = 0; r < num_replicas; ++r) it->second.copies[r].block_table = std::move(adopted[r]);
  }
  for (int r = 0; r < num_replicas; ++r) {
    if (r == home) continue;
    BlockManager& blocks = replicas[r]->blocks;
    std::vector<int32_t>& table = it->second.copies[r].block_table;
    // CanAllocate said yes for each replica's own pool.
    absl::StatusOr<std::vector<int32_t>> more = blocks.Allocate(needed[r]);
    ReportBookkeepingError(more.status());
    if (more.ok()) table.insert(table.end(), more->begin(), more->end());
    ReportBookkeepingError(blocks.Cache(absl::MakeConstSpan(seq.tokens).subspan(0, end), table));
  }
  it->second.tokens = end;
  return true;
}

void ContextParallel::AddToStep(int home, const ScheduledSequence& s, Copies& copies,
                                internal::v1::StepRequest* step) {
  const Sequence& seq = *s.seq;
  const int num_replicas = static_cast<int>(copies.copies.size());
  internal::v1::ContextParallelChunk* chunk = step->add_context_parallel();
  chunk->set_request_id(seq.id);
  const auto first = seq.tokens.begin() + s.begin;
  for (int r = 0; r < num_replicas; ++r) {
    if (r == home) continue;
    Copy& copy = copies.copies[r];
    internal::v1::StepSequence* q = step->add_sequences();
    q->set_request_id(CopyId(seq.id));
    q->set_replica(r);
    q->set_start(!copy.on_workers);
    copy.on_workers = true;
    q->mutable_new_blocks()->Add(copy.block_table.begin() + copy.blocks_on_workers, copy.block_table.end());
    copy.blocks_on_workers = static_cast<int64_t>(copy.block_table.size());
    q->mutable_token_ids()->Add(first, first + s.num_tokens);
    q->set_context_len(s.begin + s.num_tokens);
  }
  // The chunk in two slices per replica, paired first with last, second
  // with second to last and so on (the home replica takes the first and the
  // last, which ends the chunk and samples): a causal chunk's later slices
  // attend to more keys, and each pair attends to about as many as any
  // other, with as many tokens. A chunk too short for that takes one slice
  // per replica, the home's last.
  std::vector<int> by_pair = {home};
  for (int r = 0; r < num_replicas; ++r) {
    if (r != home) by_pair.push_back(r);
  }
  const int slices = s.num_tokens >= 2 * num_replicas ? 2 * num_replicas : num_replicas;
  for (int j = 0; j < slices; ++j) {
    const int owner = slices == num_replicas ? by_pair[(j + 1) % num_replicas] : by_pair[std::min(j, slices - 1 - j)];
    chunk->add_replicas(owner);
    chunk->add_slice_tokens(s.num_tokens / slices + (j < s.num_tokens % slices ? 1 : 0));
  }
}

void ContextParallel::Release(absl::Span<const std::unique_ptr<Replica>> replicas, int64_t id) {
  auto it = copies_.find(id);
  bool on_workers = false;
  for (size_t r = 0; r < it->second.copies.size(); ++r) {
    const Copy& copy = it->second.copies[r];
    ReportBookkeepingError(replicas[r]->blocks.Release(copy.block_table));
    on_workers = on_workers || copy.on_workers;
  }
  // One id names the copy in every replica (each worker keeps its own).
  if (on_workers) released_.push_back(CopyId(id));
  copies_.erase(it);
}

void ContextParallel::ReleaseAll(absl::Span<const std::unique_ptr<Replica>> replicas) {
  std::vector<int64_t> ids;
  for (const auto& [id, copies] : copies_) ids.push_back(id);
  for (int64_t id : ids) Release(replicas, id);
}

std::vector<int64_t> ContextParallel::TakeReleased() { return std::exchange(released_, {}); }

}  // namespace mlaserve
