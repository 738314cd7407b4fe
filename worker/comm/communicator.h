// Collectives among the ranks of one engine group (or a subgroup of it), as
// the sharded model needs them. Two implementations: NCCL over GPU buffers
// (nccl_communicator.h) and Gloo over TCP with host buffers
// (gloo_communicator.h). Buffers are raw pointers of `count` elements of
// `dtype` in the memory the implementation works on (device_buffers()).
//
// Every call is collective over all ranks (Send/Recv: over the pair) and
// blocks until this rank's part is done. A peer that fails or stays silent
// past the communicator's timeout makes the call return an error instead of
// hanging; after any error the communicator is broken and every later call
// fails at once (the group is torn down and rebuilt by its owner).
#ifndef MLASERVE_WORKER_COMM_COMMUNICATOR_H_
#define MLASERVE_WORKER_COMM_COMMUNICATOR_H_

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/dtype.h"

namespace mlaserve {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual std::string_view name() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // True when buffers are device (GPU) pointers, false for host memory.
  virtual bool device_buffers() const = 0;

  // data[i] = sum over ranks of data[i], in place.
  virtual absl::Status AllReduceSum(void* data, int64_t count, DType dtype) = 0;
  // recv[r * count, (r + 1) * count) = rank r's send[0, count).
  virtual absl::Status AllGather(const void* send, void* recv, int64_t count, DType dtype) = 0;
  // send holds size() blocks of `count`; rank r's recv = sum over ranks of block r.
  virtual absl::Status ReduceScatterSum(const void* send, void* recv, int64_t count, DType dtype) = 0;
  // send holds send_counts[p] elements for each peer p, in rank order (own
  // rank included); recv receives recv_counts[p] elements from each peer p,
  // in rank order. Counts may be zero and must agree pairwise between ranks.
  virtual absl::Status AllToAllV(const void* send, absl::Span<const int64_t> send_counts, void* recv,
                                 absl::Span<const int64_t> recv_counts, DType dtype) = 0;
  virtual absl::Status Send(const void* data, int64_t count, DType dtype, int peer) = 0;
  virtual absl::Status Recv(void* data, int64_t count, DType dtype, int peer) = 0;
  // Several buffers of `count` elements each, in order, received by the
  // peer's RecvBatch into as many buffers (scattered KV blocks). Here one
  // Send or Recv per buffer; an implementation may move them together.
  virtual absl::Status SendBatch(absl::Span<const void* const> buffers, int64_t count, DType dtype, int peer) {
    for (const void* data : buffers) {
      if (absl::Status s = Send(data, count, dtype, peer); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  virtual absl::Status RecvBatch(absl::Span<void* const> buffers, int64_t count, DType dtype, int peer) {
    for (void* data : buffers) {
      if (absl::Status s = Recv(data, count, dtype, peer); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  virtual absl::Status Barrier() = 0;
};

// A communicator on device buffers runs on its own stream, which does not
// wait for the backend's: the backend's queued work must finish first.
template <typename OpsT>
absl::Status ReadyForCollective(OpsT& ops, const Communicator& comm) {
  return comm.device_buffers() ? ops.Synchronize() : absl::OkStatus();
}

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_COMM_COMMUNICATOR_H_
