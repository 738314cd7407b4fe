// Collectives over TCP between host buffers, with Gloo: the communicator of
// CPU workers, and of the tests that need several ranks without GPUs.
//
// The ranks meet through `store`: each publishes its listening addresses
// under `prefix` + "/" and connects to every other rank (a full mesh), so
// `prefix` must be unique to this group's incarnation (the store's keys are
// written once). Every operation, the rendezvous included, fails with a
// Status after `options.timeout` instead of hanging on a silent peer; a peer
// that dies shows as a closed connection and fails the call at once.
//
// Gloo sends nothing before the receiver is ready: a Send returns once the
// peer has posted the matching Recv, so two ranks that both Send to each
// other first wait on each other. Counts must agree between ranks, as the
// Communicator contract says; Gloo cannot report a disagreement as an error
// (a message longer than its receive fails a check on Gloo's I/O thread,
// which aborts the process; a shorter one leaves the receive's tail as it
// was).
//
// NewGlooCommunicator sets SIGPIPE to ignored unless the program handles it:
// Gloo writes to sockets with writev(2), so a peer's closed connection would
// otherwise kill this process instead of failing the call.
//
// The store only has to outlive NewGlooCommunicator. The communicator owns
// its sockets and Gloo's I/O thread. It is not thread-safe: every rank must
// issue the same calls in the same order, so one thread drives it.
#ifndef MLASERVE_WORKER_COMM_GLOO_COMMUNICATOR_H_
#define MLASERVE_WORKER_COMM_GLOO_COMMUNICATOR_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"
#include "worker/comm/rendezvous_store.h"

namespace mlaserve {

struct GlooOptions {
  // The address this rank listens on; peers connect to it.
  std::string hostname = "127.0.0.1";
  // Bounds the rendezvous and every wait on a peer in a later call.
  absl::Duration timeout = absl::Seconds(30);
};

absl::StatusOr<std::unique_ptr<Communicator>> NewGlooCommunicator(RendezvousStore& store, const std::string& prefix,
                                                                 int rank, int size, const GlooOptions& options);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_COMM_GLOO_COMMUNICATOR_H_
