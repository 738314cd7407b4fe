#include "worker/comm/rendezvous_store.h"

#include "absl/strings/str_cat.h"

namespace mlaserve {

absl::Status InMemoryRendezvousStore::Set(const std::string& key, const std::string& value) {
  if (key.empty()) return absl::InvalidArgumentError("rendezvous key is empty");
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = values_.emplace(key, value);
  if (!inserted && it->second != value) {
    return absl::FailedPreconditionError(absl::StrCat("rendezvous key \"", key, "\" already set to another value"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> InMemoryRendezvousStore::Get(const std::string& key, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto present = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return values_.contains(key); };
  if (!mu_.AwaitWithTimeout(absl::Condition(&present), timeout)) {
    return absl::DeadlineExceededError(
        absl::StrCat("rendezvous key \"", key, "\" not set within ", absl::FormatDuration(timeout)));
  }
  return values_.at(key);
}

}  // namespace mlaserve
