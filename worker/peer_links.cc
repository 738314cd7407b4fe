#include "worker/peer_links.h"

#include "common/status_macros.h"

namespace mlaserve {

absl::StatusOr<Communicator*> PeerLinks::Get(const std::string& name, int rank, absl::Duration timeout) {
  {
    absl::MutexLock lock(&mu_);
    auto it = links_.find(name);
    if (it != links_.end()) return it->second.get();
  }
  // Made outside the lock: it waits for the peer, and other links must not.
  ASSIGN_OR_RETURN(std::unique_ptr<Communicator> link, factory_(store_, "link/" + name, rank, 2, timeout));
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = links_.emplace(name, std::move(link));
  return it->second.get();
}

void PeerLinks::Drop(const std::string& name) {
  absl::MutexLock lock(&mu_);
  links_.erase(name);
}

}  // namespace mlaserve
