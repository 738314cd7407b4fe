// The coordinator's rendezvous store: the internal.v1.Rendezvous service that
// the ranks of an engine group meet through before their collectives connect
// (Gloo TCP addresses, the NCCL unique id; worker/comm/rendezvous_store.h).
// An in-memory map, so it lives exactly as long as the coordinator, which is
// also what builds the groups; each group's keys share a prefix that the
// engine drops with DeletePrefix when the group dies.
//
// Keys are written once (the same value again is fine, another value is
// FAILED_PRECONDITION). Get blocks a server thread while it waits, for at
// most `max_wait`, and ends early when the caller cancels. Thread-safe.
#ifndef MLASERVE_COORDINATOR_CLUSTER_RENDEZVOUS_SERVICE_H_
#define MLASERVE_COORDINATOR_CLUSTER_RENDEZVOUS_SERVICE_H_

#include <map>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/auth.h"
#include "proto/worker.grpc.pb.h"

namespace mlaserve {

class RendezvousService final : public internal::v1::Rendezvous::Service {
 public:
  // `callers`: the cluster secret.
  explicit RendezvousService(absl::Duration max_wait = absl::Seconds(600), KeySet callers = {});

  grpc::Status Set(grpc::ServerContext* context, const internal::v1::StoreSetRequest* request,
                   internal::v1::StoreSetResponse* response) override;
  grpc::Status Get(grpc::ServerContext* context, const internal::v1::StoreGetRequest* request,
                   internal::v1::StoreGetResponse* response) override;

  // Forgets every key that starts with `prefix`.
  void DeletePrefix(const std::string& prefix);

 private:
  const absl::Duration max_wait_;
  const KeySet callers_;
  absl::Mutex mu_;
  std::map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_CLUSTER_RENDEZVOUS_SERVICE_H_
