// One request's updates, handed from the engine's threads (which push) to the
// front-end thread that answers the request (which takes). A streamed response
// wakes its thread for every update; a whole one only for the last: a wake per
// token per request is what a busy server pays most for. Once closed, because
// nobody will read them, updates are dropped. Thread-safe.
#ifndef MLASERVE_COORDINATOR_API_UPDATE_QUEUE_H_
#define MLASERVE_COORDINATOR_API_UPDATE_QUEUE_H_

#include <deque>
#include <iterator>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/serving/request.h"

namespace mlaserve {

class UpdateQueue {
 public:
  // `wake_on_each`: Take returns as soon as any update is there; else only
  // once the last (finished) one is.
  explicit UpdateQueue(bool wake_on_each) : wake_on_each_(wake_on_each) {}

  void Push(const GenerateUpdate& update) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    updates_.push_back(update);
  }

  // Every update there is once one is ready (see the constructor); empty
  // after `timeout` without.
  std::vector<GenerateUpdate> Take(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(this, &UpdateQueue::Ready), timeout);
    if (!Ready()) return {};
    std::vector<GenerateUpdate> out(std::make_move_iterator(updates_.begin()),
                                    std::make_move_iterator(updates_.end()));
    updates_.clear();
    return out;
  }

  // Drops what is queued and what comes later.
  void Close() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    updates_.clear();
  }

 private:
  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !updates_.empty() && (wake_on_each_ || updates_.back().finished());
  }

  const bool wake_on_each_;
  absl::Mutex mu_;
  std::deque<GenerateUpdate> updates_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_API_UPDATE_QUEUE_H_
