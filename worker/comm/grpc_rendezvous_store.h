// The rendezvous store of a cluster: a client of the coordinator's
// internal.v1.Rendezvous service (coordinator/cluster/rendezvous_service.h), so the
// ranks of a group meet through the coordinator they already know rather
// than through a shared filesystem or a separate store server.
//
// The store shares the caller's channel; it keeps no state of its own, so
// one store may serve any number of groups (their keys differ by prefix).
// Thread-safe.
#ifndef MLASERVE_WORKER_COMM_GRPC_RENDEZVOUS_STORE_H_
#define MLASERVE_WORKER_COMM_GRPC_RENDEZVOUS_STORE_H_

#include <memory>
#include <string>

#include <grpcpp/channel.h>

#include "proto/worker.grpc.pb.h"
#include "worker/comm/rendezvous_store.h"

namespace mlaserve {

class GrpcRendezvousStore final : public RendezvousStore {
 public:
  // `channel`: to the coordinator's internal port (with the cluster secret
  // where one is configured: common/auth.h's AuthorizedChannel).
  explicit GrpcRendezvousStore(std::shared_ptr<grpc::Channel> channel);

  absl::Status Set(const std::string& key, const std::string& value) override;
  // The server waits up to `timeout`; the RPC's deadline is a little longer,
  // so the server's own answer (the value, or DEADLINE_EXCEEDED naming the
  // key) arrives before the client gives up.
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override;

 private:
  std::unique_ptr<internal::v1::Rendezvous::Stub> stub_;
};

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_COMM_GRPC_RENDEZVOUS_STORE_H_
