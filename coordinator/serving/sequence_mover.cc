#include "coordinator/serving/sequence_mover.h"

#include <iostream>
#include <thread>
#include <utility>

namespace mlaserve {

SequenceMover::SequenceMover(KvTransfer& transfer, ServingMetrics& metrics, WorkerRegistry* registry, Claim claim)
    : transfer_(transfer), metrics_(metrics), registry_(registry), claim_(std::move(claim)) {}

SequenceMover::~SequenceMover() { WaitIdle(); }

void SequenceMover::WaitIdle() {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return moves_.empty() && drains_ == 0; };
  mu_.Await(absl::Condition(&idle));
}

void SequenceMover::Move(EngineGroup* from, std::unique_ptr<Sequence> seq, BlockHold hold) {
  {
    absl::MutexLock lock(&mu_);
    ++moves_[from];
  }
  std::thread([this, from, seq = std::move(seq), hold = std::move(hold)]() mutable {
    RunMove(from, std::move(seq), std::move(hold));
    absl::MutexLock lock(&mu_);
    if (--moves_[from] == 0) moves_.erase(from);
  }).detach();
}

void SequenceMover::RunMove(EngineGroup* from, std::unique_ptr<Sequence> seq, BlockHold hold) {
  const int64_t id = seq->id;
  {
    absl::MutexLock lock(&mu_);
    moving_.insert(id);
  }
  EngineGroup* to = claim_(from, id);
  if (to == nullptr) {
    from->Release(hold);
    {
      absl::MutexLock lock(&mu_);
      moving_.erase(id);
      cancelled_while_moving_.erase(id);
    }
    from->Submit(std::move(seq));  // a draining group with nowhere to go: its loop ends it
    return;
  }
  if (to != from) {
    // On failure the destination recomputes what did not arrive.
    if (!hold.blocks.empty()) MigrateBlocks(from, hold, seq->tokens, to).IgnoreError();
    metrics_.CountSequenceMoved(from->failed()                       ? "failover"
                                : from->role() == GroupRole::kPrefill ? "disaggregation"
                                                                      : "drain");
  } else {
    from->Release(hold);
  }
  // Moving until it is in `to`: a cancellation before then waits for it here,
  // one after finds it there.
  to->Submit(std::move(seq));
  to->Arrived();  // ClaimMoveDestination expected it
  bool cancelled = false;
  {
    absl::MutexLock lock(&mu_);
    moving_.erase(id);
    cancelled = cancelled_while_moving_.erase(id) > 0;
  }
  if (cancelled) to->Cancel(id);
}

absl::Status SequenceMover::MigrateBlocks(EngineGroup* from, const BlockHold& hold,
                                          const std::vector<int32_t>& tokens, EngineGroup* to) {
  const int64_t num_tokens = static_cast<int64_t>(hold.blocks.size()) * from->block_size();
  // Every rank of the replica holds its KV. A failed group's is read from
  // the first rank that answers, among those not declared dead (a dead one
  // refuses at once; a hung one is declared dead by its silence).
  std::vector<WorkerInfo> sources = from->ReplicaWorkers(hold.replica);
  if (from->failed() && registry_ != nullptr) {
    std::erase_if(sources, [this](const WorkerInfo& w) { return !registry_->IsLive(w.id); });
  }
  // A replica that deals its blocks over its head shards has no rank holding them all.
  absl::StatusOr<BlockHold> reserved =
      from->spreads_kv() || to->spreads_kv()
          ? absl::FailedPreconditionError("KV spread over head shards (decode context parallelism) does not move")
          : to->Reserve(static_cast<int64_t>(hold.blocks.size()));
  absl::Status status = reserved.status();
  if (reserved.ok()) {
    status = absl::UnavailableError("no rank holding the KV is alive");
    for (const WorkerInfo& source : sources) {
      status = transfer_.Copy({{source}, hold.blocks}, {to->ReplicaWorkers(reserved->replica), reserved->blocks});
      if (status.ok() || !from->failed()) break;
    }
    if (status.ok()) to->CommitPrefix(*reserved, tokens);
    to->Release(*reserved);  // committed blocks stay cached; the others go back to the free list
  }
  from->Release(hold);
  metrics_.AddRemotePrefixTokens(status.ok() ? "migrated" : "recomputed", static_cast<double>(num_tokens));
  if (!status.ok()) std::cerr << "coordinator: KV migration failed, recomputing instead: " << status << "\n";
  return status;
}

bool SequenceMover::MovesFrom(const EngineGroup* group) {
  absl::MutexLock lock(&mu_);
  return moves_.count(group) > 0;
}

bool SequenceMover::CancelIfMoving(int64_t request_id) {
  absl::MutexLock lock(&mu_);
  if (moving_.count(request_id) == 0) return false;
  cancelled_while_moving_.insert(request_id);
  return true;
}

void SequenceMover::Drain(EngineGroup* group) {
  {
    absl::MutexLock lock(&mu_);
    ++drains_;
  }
  group->Drain();
  std::thread([this, group] { FinishDrain(group); }).detach();
}

void SequenceMover::FinishDrain(EngineGroup* group) {
  absl::MutexLock lock(&mu_);
  // Done once the group has moved everything out and every move has copied
  // its KV out (the workers serve those reads until then). drained() is the
  // group's to tell, so the wait looks again every 50 ms.
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

}  // namespace mlaserve
