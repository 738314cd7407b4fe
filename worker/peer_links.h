// Two-rank communicators between this worker and peers of other groups, for
// KV transfers over NCCL. The coordinator names each link (and renames it
// after a failure); both ends ask for it concurrently, the sender as rank 0,
// which makes the ncclUniqueId that the coordinator's store relays. Links are
// made on first use and kept; a broken one is dropped. Thread-safe; the
// coordinator runs one transfer at a time per link.
#ifndef MLASERVE_WORKER_PEER_LINKS_H_
#define MLASERVE_WORKER_PEER_LINKS_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "worker/comm/communicator.h"
#include "worker/comm/rendezvous_store.h"
#include "worker/group_comms.h"

namespace mlaserve {

class PeerLinks {
 public:
  PeerLinks(RendezvousStore& store, CommunicatorFactory factory) : store_(store), factory_(std::move(factory)) {}

  // The link `name` with this worker as `rank` (0 or 1); the communicator
  // stays owned here.
  absl::StatusOr<Communicator*> Get(const std::string& name, int rank, absl::Duration timeout);
  void Drop(const std::string& name);

 private:
  RendezvousStore& store_;
  const CommunicatorFactory factory_;
  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Communicator>> links_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_PEER_LINKS_H_
