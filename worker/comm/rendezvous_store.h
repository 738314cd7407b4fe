// The key-value store ranks meet through before they can talk to each other:
// Gloo publishes its TCP addresses there, NCCL rank 0 its ncclUniqueId. In a
// cluster it is the coordinator's Rendezvous service (GrpcRendezvousStore),
// so no shared filesystem is needed; tests may use the in-memory store.
// Keys are written once: setting a key again to the same value is a no-op
// (a retried RPC), to another value FAILED_PRECONDITION, so a rebuilt group
// needs a fresh key prefix or its old keys dropped. Get waits for a key
// until the timeout.
#ifndef MLASERVE_WORKER_COMM_RENDEZVOUS_STORE_H_
#define MLASERVE_WORKER_COMM_RENDEZVOUS_STORE_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace mlaserve {

class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;
  virtual absl::Status Set(const std::string& key, const std::string& value) = 0;
  // The value of `key`, waiting up to `timeout` for some rank to set it.
  virtual absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) = 0;
};

// For ranks that are threads of one process (tests).
class InMemoryRendezvousStore final : public RendezvousStore {
 public:
  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override;

 private:
  absl::Mutex mu_;
  std::map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_COMM_RENDEZVOUS_STORE_H_
