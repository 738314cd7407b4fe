#include "coordinator/serving/callback_thread.h"

#include <utility>

namespace mlaserve {

CallbackThread::CallbackThread() : thread_([this] { Run(); }) {}

CallbackThread::~CallbackThread() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void CallbackThread::Post(std::function<void()> callback) {
  absl::MutexLock lock(&mu_);
  callbacks_.push_back(std::move(callback));
  ++posted_;
}

void CallbackThread::Flush() {
  absl::MutexLock lock(&mu_);
  const int64_t target = posted_;
  auto ran = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ >= target; };
  mu_.Await(absl::Condition(&ran));
}

void CallbackThread::Run() {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !callbacks_.empty() || stopping_; };
  while (true) {
    mu_.Await(absl::Condition(&ready));
    if (callbacks_.empty()) return;  // stopping, and everything ran
    std::function<void()> callback = std::move(callbacks_.front());
    callbacks_.pop_front();
    mu_.Unlock();
    callback();
    mu_.Lock();
    ++done_;
  }
}

}  // namespace mlaserve
