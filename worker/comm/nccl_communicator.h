// Collectives between GPU buffers with NCCL: the communicator of GPU workers,
// one rank per GPU (see communicator.h for the operations).
//
// The ranks meet through `store`: rank 0 publishes its ncclUniqueId under
// `prefix` + "/nccl_unique_id", so `prefix` must be unique to this group's
// incarnation (the store's keys are written once). The store only has to
// outlive NewNcclCommunicator.
//
// The NCCL communicator is non-blocking, and every call (initialization
// included) polls it and the communicator's stream until the operation is
// done on the device, so no call outlives `options.timeout`: a dead or
// silent peer makes the call abort the NCCL communicator and fail (a
// watchdog in the caller's thread). Calls return only when the device work
// is complete, so the output buffers are then ready for any stream; the
// inputs must be ready when the call is made (the communicator's own stream
// does not wait for the caller's streams).
//
// The communicator owns the NCCL communicator, a CUDA stream and a small
// device buffer for Barrier, all on `options.device`, which every call makes
// the calling thread's current device. It is not thread-safe: every rank must
// issue the same calls in the same order, so one thread drives it.
#ifndef MLASERVE_WORKER_COMM_NCCL_COMMUNICATOR_H_
#define MLASERVE_WORKER_COMM_NCCL_COMMUNICATOR_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"
#include "worker/comm/rendezvous_store.h"

namespace mlaserve {

struct NcclOptions {
  // The CUDA device of this rank; buffers passed to the calls live on it.
  int device = 0;
  // Bounds the rendezvous, the NCCL initialization and every later call.
  absl::Duration timeout = absl::Seconds(30);
};

absl::StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(RendezvousStore& store, const std::string& prefix,
                                                                  int rank, int size, const NcclOptions& options);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_COMM_NCCL_COMMUNICATOR_H_
