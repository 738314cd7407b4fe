#include "worker/comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <thread>

#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_check.h"
#include "worker/comm/nccl_check.h"

namespace mlaserve {
namespace {

// How long the wait loop spins (yielding) before it starts sleeping between
// polls: collectives of decode steps finish in microseconds, and a sleep
// would add more than that; long waits should not burn a core.
constexpr absl::Duration kSpinFor = absl::Milliseconds(1);
constexpr absl::Duration kPollInterval = absl::Microseconds(50);

absl::StatusOr<ncclDataType_t> SumType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return ncclFloat32;
    case DType::kBF16: return ncclBfloat16;
    case DType::kF16: return ncclFloat16;
    case DType::kI32: return ncclInt32;
    case DType::kI64: return ncclInt64;
    default:
      return absl::InvalidArgumentError(absl::StrCat("sum of ", std::string(DTypeName(dtype)), " is not supported"));
  }
}

// A call has started when NCCL accepted it, done or not.
bool Started(ncclResult_t result) { return result == ncclSuccess || result == ncclInProgress; }

absl::Status CheckCount(int64_t count) {
  if (count < 0) return absl::InvalidArgumentError(absl::StrCat("negative count ", count));
  return absl::OkStatus();
}

// Rank 0 makes the id of the NCCL communicator and hands it to the others.
absl::StatusOr<ncclUniqueId> ShareUniqueId(RendezvousStore& store, const std::string& key, int rank,
                                           absl::Duration timeout) {
  ncclUniqueId id;
  if (rank == 0) {
    NCCL_RETURN_IF_ERROR(ncclGetUniqueId(&id));
    RETURN_IF_ERROR(store.Set(key, std::string(id.internal, sizeof(id.internal))));
    return id;
  }
  ASSIGN_OR_RETURN(const std::string value, store.Get(key, timeout));
  if (value.size() != sizeof(id.internal)) {
    return absl::DataLossError(
        absl::StrCat("rendezvous key \"", key, "\" holds ", value.size(), " bytes, not an ncclUniqueId"));
  }
  std::memcpy(id.internal, value.data(), value.size());
  return id;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(int rank, int size, const NcclOptions& options)
      : rank_(rank), size_(size), device_(options.device), timeout_(options.timeout) {}

  // Destroy waits for nothing on a healthy communicator (every call waited
  // for its work), and Abort stops whatever a broken one left running.
  // Errors cannot be reported from here and change nothing for the caller.
  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    if (comm_ != nullptr) ncclCommDestroy(comm_);
    if (barrier_ != nullptr) cudaFree(barrier_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Init(const ncclUniqueId& id) {
    return Run("init", [&]() -> absl::Status {
      CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      // Zero, so the barrier's all-reduce keeps it zero.
      CUDA_RETURN_IF_ERROR(cudaMalloc(&barrier_, sizeof(int32_t)));
      CUDA_RETURN_IF_ERROR(cudaMemset(barrier_, 0, sizeof(int32_t)));
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = 0;
      return Await("ncclCommInitRankConfig", ncclCommInitRankConfig(&comm_, size_, id, rank_, &config));
    });
  }

  std::string_view name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool device_buffers() const override { return true; }

  absl::Status AllReduceSum(void* data, int64_t count, DType dtype) override {
    return Run("AllReduceSum", [&]() -> absl::Status {
      RETURN_IF_ERROR(CheckCount(count));
      ASSIGN_OR_RETURN(const ncclDataType_t type, SumType(dtype));
      // Every rank has the same count, so all skip together.
      if (count == 0) return absl::OkStatus();
      return Await("ncclAllReduce", ncclAllReduce(data, data, count, type, ncclSum, comm_, stream_));
    });
  }

  // The movement-only calls go as bytes, so they take every dtype.
  absl::Status AllGather(const void* send, void* recv, int64_t count, DType dtype) override {
    return Run("AllGather", [&]() -> absl::Status {
      RETURN_IF_ERROR(CheckCount(count));
      if (count == 0) return absl::OkStatus();
      return Await("ncclAllGather", ncclAllGather(send, recv, count * DTypeBytes(dtype), ncclUint8, comm_, stream_));
    });
  }

  absl::Status ReduceScatterSum(const void* send, void* recv, int64_t count, DType dtype) override {
    return Run("ReduceScatterSum", [&]() -> absl::Status {
      RETURN_IF_ERROR(CheckCount(count));
      ASSIGN_OR_RETURN(const ncclDataType_t type, SumType(dtype));
      if (count == 0) return absl::OkStatus();
      return Await("ncclReduceScatter", ncclReduceScatter(send, recv, count, type, ncclSum, comm_, stream_));
    });
  }

  absl::Status AllToAllV(const void* send, absl::Span<const int64_t> send_counts, void* recv,
                         absl::Span<const int64_t> recv_counts, DType dtype) override {
    return Run("AllToAllV", [&]() -> absl::Status {
      RETURN_IF_ERROR(CheckCounts(send_counts, "send"));
      RETURN_IF_ERROR(CheckCounts(recv_counts, "recv"));
      if (send_counts[rank_] != recv_counts[rank_]) {
        return absl::InvalidArgumentError(
            absl::StrCat("own block: send count ", send_counts[rank_], " != recv count ", recv_counts[rank_]));
      }
      // Counts agree pairwise, so a rank with nothing to move is awaited by
      // no one; NCCL is spared an empty group.
      if (IsZero(send_counts) && IsZero(recv_counts)) return absl::OkStatus();
      return Await("AllToAllV group", SendRecvGroup(static_cast<const char*>(send), send_counts,
                                                    static_cast<char*>(recv), recv_counts, DTypeBytes(dtype)));
    });
  }

  absl::Status Send(const void* data, int64_t count, DType dtype, int peer) override {
    return Run("Send", [&]() -> absl::Status {
      RETURN_IF_ERROR(CheckPeer(peer));
      RETURN_IF_ERROR(CheckCount(count));
      // The peer's Recv has the same count and skips as well.
      if (count == 0) return absl::OkStatus();
      return Await("ncclSend", ncclSend(data, count * DTypeBytes(dtype), ncclUint8, peer, comm_, stream_));
    });
  }

  absl::Status Recv(void* data, int64_t count, DType dtype, int peer) override {
    return Run("Recv", [&]() -> absl::Status {
      RETURN_IF_ERROR(CheckPeer(peer));
      RETURN_IF_ERROR(CheckCount(count));
      if (count == 0) return absl::OkStatus();
      return Await("ncclRecv", ncclRecv(data, count * DTypeBytes(dtype), ncclUint8, peer, comm_, stream_));
    });
  }

  // One NCCL group per kBatch buffers, so the transfer waits once per group
  // instead of once per buffer.
  absl::Status SendBatch(absl::Span<const void* const> buffers, int64_t count, DType dtype, int peer) override {
    return Run("SendBatch", [&]() -> absl::Status {
      RETURN_IF_ERROR(CheckPeer(peer));
      RETURN_IF_ERROR(CheckCount(count));
      if (count == 0) return absl::OkStatus();
      for (size_t first = 0; first < buffers.size(); first += kBatch) {
        RETURN_IF_ERROR(Await("ncclSend group", P2pGroup(buffers.subspan(first, kBatch).data(),
                                                         std::min(kBatch, buffers.size() - first),
                                                         count * DTypeBytes(dtype), peer, /*send=*/true)));
      }
      return absl::OkStatus();
    });
  }

  absl::Status RecvBatch(absl::Span<void* const> buffers, int64_t count, DType dtype, int peer) override {
    return Run("RecvBatch", [&]() -> absl::Status {
      RETURN_IF_ERROR(CheckPeer(peer));
      RETURN_IF_ERROR(CheckCount(count));
      if (count == 0) return absl::OkStatus();
      for (size_t first = 0; first < buffers.size(); first += kBatch) {
        RETURN_IF_ERROR(Await("ncclRecv group", P2pGroup(buffers.subspan(first, kBatch).data(),
                                                         std::min(kBatch, buffers.size() - first),
                                                         count * DTypeBytes(dtype), peer, /*send=*/false)));
      }
      return absl::OkStatus();
    });
  }

  absl::Status Barrier() override {
    return Run("Barrier", [&] {
      return Await("ncclAllReduce", ncclAllReduce(barrier_, barrier_, 1, ncclInt32, ncclSum, comm_, stream_));
    });
  }

 private:
  // Runs one call unless an earlier one failed. A failed call may have left
  // work on the device or the peers out of step, so the first error aborts
  // the NCCL communicator (which also stops its kernels) for good.
  absl::Status Run(const char* op, absl::FunctionRef<absl::Status()> fn) {
    if (!broken_.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("communicator broken by earlier error: ", broken_.ToString()));
    }
    absl::Status status = [&]() -> absl::Status {
      CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
      return fn();
    }();
    if (!status.ok()) {
      broken_ = absl::Status(status.code(),
                             absl::StrCat("NCCL ", op, " on rank ", rank_, " of ", size_, ": ", status.message()));
      if (comm_ != nullptr) ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    return broken_;
  }

  // Waits for a call that `started` says NCCL accepted (see Wait).
  absl::Status Await(const char* call, ncclResult_t started) {
    if (!Started(started)) return NcclStatus(started, call, __FILE__, __LINE__);
    return Wait(call);
  }

  // Polls until NCCL has enqueued all of the call's work (a non-blocking
  // communicator reports ncclInProgress until then) and the stream has run
  // it, or until an asynchronous error or the deadline. This is the
  // watchdog: a kernel waiting on a dead peer never finishes by itself.
  absl::Status Wait(const char* call) {
    const absl::Time start = absl::Now();
    const absl::Time deadline = start + timeout_;
    while (true) {
      ncclResult_t async = ncclSuccess;
      NCCL_RETURN_IF_ERROR(ncclCommGetAsyncError(comm_, &async));
      if (!Started(async)) {
        return absl::UnavailableError(
            absl::StrCat(call, ": ", ncclGetErrorString(async), ": ", ncclGetLastError(comm_)));
      }
      if (async == ncclSuccess) {
        const cudaError_t query = cudaStreamQuery(stream_);
        if (query == cudaSuccess) return absl::OkStatus();
        if (query != cudaErrorNotReady) return CudaStatus(query, "cudaStreamQuery", __FILE__, __LINE__);
      }
      const absl::Time now = absl::Now();
      if (now >= deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            call, ": not done after ", absl::FormatDuration(timeout_),
            async == ncclInProgress ? " (NCCL still busy on the host)" : " (still running on the device)"));
      }
      if (now - start < kSpinFor) {
        std::this_thread::yield();
      } else {
        absl::SleepFor(kPollInterval);
      }
    }
  }

  static constexpr size_t kBatch = 64;

  // `n` sends (or receives) of `bytes` each with `peer`, in one NCCL group.
  ncclResult_t P2pGroup(const void* const* buffers, size_t n, size_t bytes, int peer, bool send) {
    ncclResult_t result = ncclGroupStart();
    if (result != ncclSuccess) return result;
    for (size_t i = 0; i < n && Started(result); ++i) {
      result = send ? ncclSend(buffers[i], bytes, ncclUint8, peer, comm_, stream_)
                    : ncclRecv(const_cast<void*>(buffers[i]), bytes, ncclUint8, peer, comm_, stream_);
    }
    const ncclResult_t end = ncclGroupEnd();
    return Started(result) ? end : result;
  }

  // One send and one receive per peer with a nonzero count, fused so that
  // they progress together; blocks lie back to back in rank order.
  ncclResult_t SendRecvGroup(const char* send, absl::Span<const int64_t> send_counts, char* recv,
                             absl::Span<const int64_t> recv_counts, size_t element_bytes) {
    ncclResult_t result = ncclGroupStart();
    if (result != ncclSuccess) return result;
    size_t send_offset = 0, recv_offset = 0;
    for (int peer = 0; peer < size_ && Started(result); ++peer) {
      const size_t send_bytes = send_counts[peer] * element_bytes;
      const size_t recv_bytes = recv_counts[peer] * element_bytes;
      if (send_bytes > 0) result = ncclSend(send + send_offset, send_bytes, ncclUint8, peer, comm_, stream_);
      if (recv_bytes > 0 && Started(result)) {
        result = ncclRecv(recv + recv_offset, recv_bytes, ncclUint8, peer, comm_, stream_);
      }
      send_offset += send_bytes;
      recv_offset += recv_bytes;
    }
    // Ended even after a failure: the group is thread-local NCCL state that
    // would otherwise swallow the thread's next NCCL calls.
    const ncclResult_t end = ncclGroupEnd();
    return Started(result) ? end : result;
  }

  absl::Status CheckCounts(absl::Span<const int64_t> counts, const char* what) const {
    if (static_cast<int>(counts.size()) != size_) {
      return absl::InvalidArgumentError(absl::StrCat(counts.size(), " ", what, " counts for ", size_, " ranks"));
    }
    for (int64_t count : counts) RETURN_IF_ERROR(CheckCount(count));
    return absl::OkStatus();
  }

  static bool IsZero(absl::Span<const int64_t> counts) {
    for (int64_t count : counts) {
      if (count != 0) return false;
    }
    return true;
  }

  // A Send to oneself could never complete: this rank's Recv comes later.
  absl::Status CheckPeer(int peer) const {
    if (peer < 0 || peer >= size_ || peer == rank_) {
      return absl::InvalidArgumentError(absl::StrCat("peer ", peer, " is not another rank of ", size_));
    }
    return absl::OkStatus();
  }

  const int rank_;
  const int size_;
  const int device_;
  const absl::Duration timeout_;
  cudaStream_t stream_ = nullptr;
  void* barrier_ = nullptr;    // one int32 on the device
  ncclComm_t comm_ = nullptr;  // null once aborted
  absl::Status broken_;        // OK until the first failed call
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(RendezvousStore& store, const std::string& prefix,
                                                                  int rank, int size, const NcclOptions& options) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " of ", size));
  }
  if (options.timeout <= absl::ZeroDuration()) return absl::InvalidArgumentError("NCCL timeout must be positive");
  // Before the rendezvous, so that a bad device fails here and not as a
  // peer's timeout.
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  ASSIGN_OR_RETURN(const ncclUniqueId id,
                   ShareUniqueId(store, absl::StrCat(prefix, "/nccl_unique_id"), rank, options.timeout));
  auto communicator = std::make_unique<NcclCommunicator>(rank, size, options);
  RETURN_IF_ERROR(communicator->Init(id));
  return std::unique_ptr<Communicator>(std::move(communicator));
}

}  // namespace mlaserve
