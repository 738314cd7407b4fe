#ifndef MLASERVE_COORDINATOR_SERVING_CALLBACK_THREAD_H_
#define MLASERVE_COORDINATOR_SERVING_CALLBACK_THREAD_H_

#include <deque>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace mlaserve {

// Runs callbacks on a thread of its own, one at a time, in the order they were
// posted. An engine group posts each step's updates here: handing them over
// costs its loop one wake, where running them would cost a wake of every
// request's reader while the GPU waits for the next step. (Hand-written: no
// Debian library offers a plain serial executor; gRPC's and Abseil's are
// internal.)
class CallbackThread {
 public:
  CallbackThread();
  // Runs every callback posted before, then joins the thread.
  ~CallbackThread();
  CallbackThread(const CallbackThread&) = delete;
  CallbackThread& operator=(const CallbackThread&) = delete;

  // Queues `callback` to run after every callback posted before it.
  // REQUIRES: called before the destructor starts.
  void Post(std::function<void()> callback) ABSL_LOCKS_EXCLUDED(mu_);

  // Returns once every callback posted before the call has run.
  // REQUIRES: not called from a callback (it would wait for itself).
  void Flush() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Run();

  absl::Mutex mu_;
  std::deque<std::function<void()>> callbacks_ ABSL_GUARDED_BY(mu_);
  int64_t posted_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t done_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_CALLBACK_THREAD_H_
