// Moving sequences between engine groups. A draining group, and a prefill
// group under prefill/decode disaggregation, move the sequences they let go of
// to other groups, where they continue unchanged; the latent KV of their
// computed whole blocks migrates with them (what does not arrive is
// recomputed). Each move and each drain runs on a thread of its own, so that a
// slow transfer holds up no engine loop.
#ifndef MLASERVE_COORDINATOR_SERVING_SEQUENCE_MOVER_H_
#define MLASERVE_COORDINATOR_SERVING_SEQUENCE_MOVER_H_

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/serving/engine_group.h"
#include "coordinator/serving/kv_transfer.h"
#include "coordinator/serving/metrics.h"
#include "coordinator/cluster/worker_registry.h"

namespace mlaserve {

class SequenceMover {
 public:
  // Picks the group request `request_id` moves to from `from`, records it
  // as the request's group (so that a cancellation finds it there) and has
  // it expect the request (EngineGroup::ExpectArrival; the mover calls
  // Arrived once it submitted it there); null when no group can take it.
  // Called without the mover's lock.
  using Claim = std::function<EngineGroup*(EngineGroup* from, int64_t request_id)>;

  // `registry` (may be null) retires the workers of drained groups.
  SequenceMover(KvTransfer& transfer, ServingMetrics& metrics, WorkerRegistry* registry, Claim claim);
  // Waits for the moves and drains under way.
  ~SequenceMover();
  SequenceMover(const SequenceMover&) = delete;
  SequenceMover& operator=(const SequenceMover&) = delete;

  // Moves `seq`, which `from` let go of with its computed whole blocks held
  // in `hold`, to the group Claim picks; without one, `seq` goes back to
  // `from`, whose loop ends it. Returns at once: the move runs on its own
  // thread.
  // REQUIRES: `from` outlives the move (the destructor waits for it).
  void Move(EngineGroup* from, std::unique_ptr<Sequence> seq, BlockHold hold) ABSL_LOCKS_EXCLUDED(mu_);

  // Drains `group`: it moves every sequence out (through its move callback,
  // which must call Move), and once those moves have copied their KV out its
  // workers retire. Returns at once.
  void Drain(EngineGroup* group) ABSL_LOCKS_EXCLUDED(mu_);

  // Copies the whole blocks `hold` keeps in `from` into fresh blocks of `to`,
  // enters them into `to`'s prefix index for `tokens`, and releases the hold.
  // An error means the prefix was not copied (it is recomputed).
  absl::Status MigrateBlocks(EngineGroup* from, const BlockHold& hold, const std::vector<int32_t>& tokens,
                             EngineGroup* to);

  // A request between groups cannot be cancelled where it is: true, and the
  // cancellation is applied once it arrives, if `request_id` is moving.
  bool CancelIfMoving(int64_t request_id) ABSL_LOCKS_EXCLUDED(mu_);

  // Whether moves out of `group` are under way (they may still read its KV).
  bool MovesFrom(const EngineGroup* group) ABSL_LOCKS_EXCLUDED(mu_);

  // Blocks until no move or drain is under way.
  void WaitIdle() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void RunMove(EngineGroup* from, std::unique_ptr<Sequence> seq, BlockHold hold) ABSL_LOCKS_EXCLUDED(mu_);
  // Retires `group`'s workers once its drain and moves are done.
  void FinishDrain(EngineGroup* group) ABSL_LOCKS_EXCLUDED(mu_);

  KvTransfer& transfer_;
  ServingMetrics& metrics_;
  WorkerRegistry* const registry_;
  const Claim claim_;

  absl::Mutex mu_;
  std::map<const EngineGroup*, int> moves_ ABSL_GUARDED_BY(mu_);  // under way, by source group
  std::set<int64_t> moving_ ABSL_GUARDED_BY(mu_);                  // requests between groups
  std::set<int64_t> cancelled_while_moving_ ABSL_GUARDED_BY(mu_);
  int drains_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_SEQUENCE_MOVER_H_
