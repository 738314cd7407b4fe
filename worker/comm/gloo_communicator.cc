#include "worker/comm/gloo_communicator.h"

#include <signal.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <utility>
#include <vector>

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoallv.h>
#include <gloo/barrier.h>
#include <gloo/common/error.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>
#include <gloo/types.h>

#include "absl/functional/function_ref.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mlaserve {
namespace {

// Send/Recv slots: a prefix above the ones Gloo's collectives use (0x01 to
// 0x08 in gloo/types.h), so point-to-point messages never match theirs.
constexpr uint8_t kSendRecvSlotPrefix = 0x40;

// Carries a store error through Gloo's rendezvous code, which only knows
// exceptions, so NewGlooCommunicator can return the store's own Status.
class StoreError : public std::runtime_error {
 public:
  explicit StoreError(absl::Status status)
      : std::runtime_error(std::string(status.message())), status_(std::move(status)) {}
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
};

void ThrowIfError(absl::Status status) {
  if (!status.ok()) throw StoreError(std::move(status));
}

// Gloo's view of a RendezvousStore: keys go under `prefix`/, and every wait,
// Gloo's get included (which must block until the key exists), ends at one
// deadline for the whole rendezvous.
class StoreAdapter final : public gloo::rendezvous::Store {
 public:
  StoreAdapter(RendezvousStore& store, const std::string& prefix, absl::Time deadline)
      : store_(store), prefix_(prefix), deadline_(deadline) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    ThrowIfError(store_.Set(Key(key), std::string(data.begin(), data.end())));
  }

  std::vector<char> get(const std::string& key) override {
    absl::StatusOr<std::string> value = store_.Get(Key(key), deadline_ - absl::Now());
    ThrowIfError(value.status());
    return std::vector<char>(value->begin(), value->end());
  }

  void wait(const std::vector<std::string>& keys) override {
    for (const std::string& key : keys) ThrowIfError(store_.Get(Key(key), deadline_ - absl::Now()).status());
  }

  // Gloo passes the context's timeout, which is the one the deadline came from.
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override { wait(keys); }

 private:
  std::string Key(const std::string& key) const { return absl::StrCat(prefix_, "/", key); }

  RendezvousStore& store_;
  const std::string prefix_;
  const absl::Time deadline_;
};

// A Status for an exception out of Gloo. Gloo reports a wait past its
// timeout as an IoException whose message says so; other I/O errors (a peer
// closed the connection) are UNAVAILABLE; anything else (a failed
// GLOO_ENFORCE, e.g. sizes that disagree between ranks) is a bug: INTERNAL.
absl::Status ExceptionStatus(const char* op, const std::exception& e) {
  if (const auto* store = dynamic_cast<const StoreError*>(&e)) return store->status();
  std::string message = absl::StrCat("gloo ", op, ": ", e.what());
  if (dynamic_cast<const gloo::IoException*>(&e) == nullptr) return absl::InternalError(message);
  const std::string lower = absl::AsciiStrToLower(e.what());
  if (absl::StrContains(lower, "timed out") || absl::StrContains(lower, "timeout")) {
    return absl::DeadlineExceededError(message);
  }
  return absl::UnavailableError(message);
}

// Runs `fn`, turning whatever it throws into a Status.
absl::Status Guarded(const char* op, absl::FunctionRef<absl::Status()> fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return ExceptionStatus(op, e);
  } catch (...) {
    return absl::InternalError(absl::StrCat("gloo ", op, ": unknown exception"));
  }
}

// Callers may pass null for empty buffers; Gloo would memcpy from or do
// offset arithmetic on it, undefined even for zero bytes. Nothing is ever
// read or written through the stand-in.
char* BytesOrDummy(const void* p) {
  static char dummy;
  return p != nullptr ? static_cast<char*>(const_cast<void*>(p)) : &dummy;
}

// Our own, not gloo::sum, which counts elements with an int.
template <typename T>
void Sum(void* out, const void* a, const void* b, size_t n) {
  T* o = static_cast<T*>(out);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
}

// Calls fn(T{}) with the C++ type of `dtype` where Sum is defined for it.
template <typename Fn>
absl::Status WithSummableType(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kF32: return fn(float{});
    case DType::kF64: return fn(double{});
    case DType::kI32: return fn(int32_t{});
    case DType::kI64: return fn(int64_t{});
    default:
      return absl::InvalidArgumentError(absl::StrCat("sum of ", std::string(DTypeName(dtype)), " is not supported"));
  }
}

absl::Status CheckCount(int64_t count) {
  if (count < 0) return absl::InvalidArgumentError(absl::StrCat("negative count ", count));
  return absl::OkStatus();
}

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<gloo::Context> context, std::chrono::milliseconds timeout)
      : context_(std::move(context)), timeout_(timeout) {}

  std::string_view name() const override { return "gloo"; }
  int rank() const override { return context_->rank; }
  int size() const override { return context_->size; }
  bool device_buffers() const override { return false; }

  absl::Status AllReduceSum(void* data, int64_t count, DType dtype) override {
    return Run("AllReduceSum", [&] {
      RETURN_IF_ERROR(CheckCount(count));
      return WithSummableType(dtype, [&](auto zero) {
        using T = decltype(zero);
        // Gloo returns early on zero elements.
        gloo::AllreduceOptions opts(context_);
        opts.setOutput(reinterpret_cast<T*>(BytesOrDummy(data)), count);
        opts.setReduceFunction(&Sum<T>);
        opts.setTimeout(timeout_);
        gloo::allreduce(opts);
        return absl::OkStatus();
      });
    });
  }

  absl::Status AllGather(const void* send, void* recv, int64_t count, DType dtype) override {
    return Run("AllGather", [&] {
      RETURN_IF_ERROR(CheckCount(count));
      const size_t bytes = count * DTypeBytes(dtype);
      // Every rank has the same count, so all skip together rather than
      // pass empty chunks round Gloo's ring.
      if (bytes == 0) return absl::OkStatus();
      // As bytes: allgather only moves memory, whole blocks per rank.
      gloo::AllgatherOptions opts(context_);
      opts.setInput(BytesOrDummy(send), bytes);
      opts.setOutput(BytesOrDummy(recv), bytes * size());
      opts.setTimeout(timeout_);
      gloo::allgather(opts);
      return absl::OkStatus();
    });
  }

  // Gloo 2022's only reduce-scatter is ReduceScatterHalvingDoubling, an
  // old-style algorithm: it reserves context slots at construction (so every
  // rank must build it in lockstep), works in place on the whole input,
  // counts with int and takes no per-call timeout. Instead each
  // rank sends block p to rank p (an all-to-all, the same (size - 1) * count
  // elements a ring reduce-scatter moves) and sums what it receives.
  absl::Status ReduceScatterSum(const void* send, void* recv, int64_t count, DType dtype) override {
    return Run("ReduceScatterSum", [&] {
      RETURN_IF_ERROR(CheckCount(count));
      return WithSummableType(dtype, [&](auto zero) -> absl::Status {
        using T = decltype(zero);
        if (count == 0) return absl::OkStatus();
        const std::vector<int64_t> counts(size(), count);
        std::vector<T> blocks(static_cast<size_t>(count) * size());
        RETURN_IF_ERROR(AllToAllVBytes(send, counts, blocks.data(), counts, sizeof(T)));
        T* out = static_cast<T*>(recv);
        std::memcpy(out, blocks.data(), count * sizeof(T));
        for (int r = 1; r < size(); ++r) Sum<T>(out, out, blocks.data() + r * count, count);
        return absl::OkStatus();
      });
    });
  }

  absl::Status AllToAllV(const void* send, absl::Span<const int64_t> send_counts, void* recv,
                         absl::Span<const int64_t> recv_counts, DType dtype) override {
    return Run("AllToAllV",
               [&] { return AllToAllVBytes(send, send_counts, recv, recv_counts, DTypeBytes(dtype)); });
  }

  absl::Status Send(const void* data, int64_t count, DType dtype, int peer) override {
    return Run("Send", [&] {
      RETURN_IF_ERROR(CheckPeer(peer));
      RETURN_IF_ERROR(CheckCount(count));
      auto buffer = context_->createUnboundBuffer(BytesOrDummy(data), count * DTypeBytes(dtype));
      buffer->send(peer, SendRecvSlot());
      buffer->waitSend(timeout_);
      return absl::OkStatus();
    });
  }

  absl::Status Recv(void* data, int64_t count, DType dtype, int peer) override {
    return Run("Recv", [&] {
      RETURN_IF_ERROR(CheckPeer(peer));
      RETURN_IF_ERROR(CheckCount(count));
      auto buffer = context_->createUnboundBuffer(BytesOrDummy(data), count * DTypeBytes(dtype));
      buffer->recv(peer, SendRecvSlot());
      buffer->waitRecv(timeout_);
      return absl::OkStatus();
    });
  }

  absl::Status Barrier() override {
    return Run("Barrier", [&] {
      gloo::BarrierOptions opts(context_);
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
      return absl::OkStatus();
    });
  }

 private:
  // Runs one call unless an earlier one failed. After a failure the peers
  // are out of step (or Gloo has closed the connections, as it does on a
  // timeout), so the first error breaks the communicator for good.
  absl::Status Run(const char* op, absl::FunctionRef<absl::Status()> fn) {
    if (!broken_.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("communicator broken by earlier error: ", broken_.ToString()));
    }
    broken_ = Guarded(op, fn);
    return broken_;
  }

  // The all-to-all on `element_bytes`-byte elements. Gloo sends a message
  // per pair even for zero counts, so every rank takes part regardless.
  absl::Status AllToAllVBytes(const void* send, absl::Span<const int64_t> send_counts, void* recv,
                              absl::Span<const int64_t> recv_counts, size_t element_bytes) {
    RETURN_IF_ERROR(CheckCounts(send_counts, "send"));
    RETURN_IF_ERROR(CheckCounts(recv_counts, "recv"));
    if (send_counts[rank()] != recv_counts[rank()]) {
      return absl::InvalidArgumentError(absl::StrCat("own block: send count ", send_counts[rank()],
                                                     " != recv count ", recv_counts[rank()]));
    }
    gloo::AlltoallvOptions opts(context_);
    opts.setInput(BytesOrDummy(send), ScaledCounts(send_counts, element_bytes));
    opts.setOutput(BytesOrDummy(recv), ScaledCounts(recv_counts, element_bytes));
    opts.setTimeout(timeout_);
    gloo::alltoallv(opts);
    return absl::OkStatus();
  }

  absl::Status CheckCounts(absl::Span<const int64_t> counts, const char* what) const {
    if (static_cast<int>(counts.size()) != size()) {
      return absl::InvalidArgumentError(absl::StrCat(counts.size(), " ", what, " counts for ", size(), " ranks"));
    }
    for (int64_t count : counts) RETURN_IF_ERROR(CheckCount(count));
    return absl::OkStatus();
  }

  static std::vector<int64_t> ScaledCounts(absl::Span<const int64_t> counts, size_t element_bytes) {
    std::vector<int64_t> bytes(counts.begin(), counts.end());
    for (int64_t& b : bytes) b *= element_bytes;
    return bytes;
  }

  absl::Status CheckPeer(int peer) const {
    if (peer < 0 || peer >= size() || peer == rank()) {
      return absl::InvalidArgumentError(absl::StrCat("peer ", peer, " is not another rank of ", size()));
    }
    return absl::OkStatus();
  }

  // Messages between a pair on one slot are matched in order, so one slot
  // serves every Send/Recv.
  static uint64_t SendRecvSlot() { return gloo::Slot::build(kSendRecvSlotPrefix, 0); }

  const std::shared_ptr<gloo::Context> context_;
  const std::chrono::milliseconds timeout_;
  absl::Status broken_;  // OK until the first failed call
};

// Gloo writes with writev(2), which raises SIGPIPE on a connection the peer
// has closed, and SIGPIPE's default action kills the process. Ignored, the
// write fails with EPIPE and the call returns a Status. A handler the
// program installed itself is left alone.
void IgnoreSigpipe() {
  struct sigaction current;
  if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> NewGlooCommunicator(RendezvousStore& store, const std::string& prefix,
                                                                 int rank, int size, const GlooOptions& options) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " of ", size));
  }
  const auto timeout = absl::ToChronoMilliseconds(options.timeout);
  if (timeout.count() <= 0) return absl::InvalidArgumentError("Gloo timeout must be at least 1 ms");
  IgnoreSigpipe();
  std::shared_ptr<gloo::rendezvous::Context> context;
  RETURN_IF_ERROR(Guarded("rendezvous", [&] {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    // Before connecting: the pairs take their timeout from the context.
    context->setTimeout(timeout);
    StoreAdapter adapter(store, prefix, absl::Now() + options.timeout);
    context->connectFullMesh(adapter, device);
    // connectFullMesh returns once this rank's own pairs are up, while others
    // may still be connecting; a rank that then failed and closed its
    // sockets would fail their rendezvous. After the barrier all have met.
    gloo::BarrierOptions barrier(context);
    barrier.setTimeout(timeout);
    gloo::barrier(barrier);
    return absl::OkStatus();
  }));
  return std::unique_ptr<Communicator>(new GlooCommunicator(std::move(context), timeout));
}

}  // namespace mlaserve
