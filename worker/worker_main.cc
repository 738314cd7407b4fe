// The worker process: serves the internal Worker API on its own port,
// registers with the coordinator, and heartbeats. When the coordinator
// forgets it (declared it dead, say across a partition) or goes away (a
// restart), it registers again, with backoff, for --reregister_timeout_s;
// when the coordinator retires it (a drain), it exits. SIGTERM first asks the
// coordinator to drain the worker's group (its requests move elsewhere) and
// stops once the coordinator has let it go; SIGINT or a second signal stops
// at once.
#include <unistd.h>

#include <csignal>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/auth.h"
#include "common/grpc_keepalive.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_ops.h"
#include "proto/worker.grpc.pb.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/comm/grpc_rendezvous_store.h"
#include "worker/comm/nccl_communicator.h"
#include "worker/ops_factory.h"
#include "worker/worker_service.h"

ABSL_FLAG(std::string, coordinator, "127.0.0.1:50052", "the coordinator's internal gRPC address (its --internal_port)");
ABSL_FLAG(std::string, host, "127.0.0.1", "address to serve the Worker API on");
ABSL_FLAG(std::string, cluster_secret_file, "",
          "the cluster secret (the same file as the coordinator's): required on every call to this worker and "
          "presented on its own calls");
ABSL_FLAG(bool, insecure, false, "serve a non-loopback address without the cluster secret");
ABSL_FLAG(int, port, 0, "port to serve the Worker API on (0: any free port)");
ABSL_FLAG(double, heartbeat_interval_s, 0.5, "seconds between heartbeats");
ABSL_FLAG(double, coordinator_timeout_s, 10,
          "a coordinator silent this long is gone: the worker registers again (a restarted coordinator, a healed "
          "partition)");
ABSL_FLAG(double, reregister_timeout_s, 120,
          "after losing its coordinator (or being forgotten by it), exit if registering again fails this long");
ABSL_FLAG(std::string, device, "cpu", "backend: cpu, or cuda[:N] (GPU N, with NCCL between the ranks of a group)");
ABSL_FLAG(bool, cuda_graphs, true, "on cuda: record decode steps as CUDA graphs and replay them");
ABSL_FLAG(double, drain_timeout_s, 120, "after SIGTERM, stop anyway after this long");
ABSL_FLAG(double, transfer_chunk_delay_ms, 0,
          "pause after each KV transfer chunk sent, and before a link's send (to exercise failures mid-transfer)");
ABSL_FLAG(bool, mock_compute, false,
          "answer steps without computing (no weights or KV memory): measures the serving path's own cost");
ABSL_FLAG(double, mock_step_ms, 0,
          "with --mock_compute: each step takes this long, as a GPU's would, so batches fill as against a GPU");
ABSL_FLAG(std::string, attention_form, "cheapest",
          "MLA attention form: cheapest (each sequence's by its chunk and context), or absorbed or expanded for "
          "all (to measure against it)");
ABSL_FLAG(double, memory_gb, 0,
          "memory this worker offers for weights, activations and KV cache (0: its GPU's on cuda, the machine's RAM "
          "on cpu)");

namespace mlaserve {
namespace {

// Signals received; the heartbeat loop polls them (signal-safe).
volatile std::sig_atomic_t g_signalled = 0;
volatile std::sig_atomic_t g_terminated = 0;

void HandleSignal(int sig) {
  g_signalled = g_signalled + 1;
  if (sig == SIGTERM) g_terminated = 1;
}

// Who the coordinator took this worker for when it registered.
struct Registration {
  int32_t worker_id = -1;
  uint64_t incarnation = 0;
};

// Whether the coordinator took the drain request.
bool RequestDrain(internal::v1::Coordinator::Stub& stub, const Registration& registration) {
  const int32_t worker_id = registration.worker_id;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  internal::v1::DrainRequest request;
  request.set_worker_id(worker_id);
  request.set_incarnation(registration.incarnation);
  internal::v1::DrainResponse response;
  grpc::Status status = stub.Drain(&context, request, &response);
  if (!status.ok()) std::cerr << "worker " << worker_id << ": drain refused: " << status.error_message() << "\n";
  return status.ok();
}

// The GPU index of a --device value ("cuda" is GPU 0), -1 for the CPU.
int GpuIndex(const std::string& device) {
  if (device.rfind("cuda", 0) != 0) return -1;
  return device.size() > 5 ? std::atoi(device.c_str() + 5) : 0;
}

// Gloo over TCP for host tensors, NCCL for GPU ones.
CommunicatorFactory CommunicatorsFor(const std::string& device, const std::string& host) {
  if (const int gpu = GpuIndex(device); gpu >= 0) {
    return [gpu](RendezvousStore& s, const std::string& prefix, int rank, int size, absl::Duration timeout) {
      return NewNcclCommunicator(s, prefix, rank, size, NcclOptions{.device = gpu, .timeout = timeout});
    };
  }
  return [host](RendezvousStore& s, const std::string& prefix, int rank, int size, absl::Duration timeout) {
    return NewGlooCommunicator(s, prefix, rank, size, GlooOptions{.hostname = host, .timeout = timeout});
  };
}

// What the worker offers: --memory_gb, else its GPU's memory (the machine's
// RAM on a CPU).
absl::StatusOr<int64_t> MemoryBytes(int gpu) {
  if (const double gb = absl::GetFlag(FLAGS_memory_gb); gb > 0) return static_cast<int64_t>(gb * (1ull << 30));
  if (gpu < 0) return static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  ASSIGN_OR_RETURN(const DeviceMemory device, CudaMemoryInfo(gpu));
  return device.total_bytes;
}

// Registers, retrying with backoff (200 ms doubling to 5 s) for `timeout`;
// nothing if that fails.
std::optional<Registration> RegisterWithRetry(internal::v1::Coordinator::Stub& stub, const std::string& address,
                                              int64_t memory_bytes, const std::string& gpu_uuid,
                                              absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::Duration backoff = absl::Milliseconds(200);
  while (absl::Now() < deadline && !g_signalled) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    internal::v1::RegisterRequest request;
    request.set_address(address);
    request.set_device(absl::GetFlag(FLAGS_device));
    request.set_memory_bytes(memory_bytes);
    request.set_pid(getpid());
    request.set_gpu_uuid(gpu_uuid);
    internal::v1::RegisterResponse response;
    grpc::Status status = stub.Register(&context, request, &response);
    if (status.ok()) return Registration{response.worker_id(), response.incarnation()};
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
  return std::nullopt;
}

// Why heartbeating stopped; kForgotten and kUnreachable register again.
enum class Stop { kSignalled, kDrained, kDrainTimedOut, kForgotten, kUnreachable };
const char* StopReason(Stop stop) {
  switch (stop) {
    case Stop::kSignalled:
      return "signalled";
    case Stop::kDrained:
      return "drained";
    case Stop::kDrainTimedOut:
      return "drain timed out";
    case Stop::kForgotten:
      return "the coordinator no longer knows this worker";
    case Stop::kUnreachable:
      return "the coordinator is unreachable";
  }
  return "";
}

// Heartbeats until told to stop; returns why it stopped.
Stop Heartbeat(internal::v1::Coordinator::Stub& stub, const Registration& registration) {
  const int32_t worker_id = registration.worker_id;
  absl::Time last_contact = absl::Now();
  const absl::Duration interval = absl::Seconds(absl::GetFlag(FLAGS_heartbeat_interval_s));
  const absl::Duration timeout = absl::Seconds(absl::GetFlag(FLAGS_coordinator_timeout_s));
  bool draining = false;
  const absl::Duration drain_timeout = absl::Seconds(absl::GetFlag(FLAGS_drain_timeout_s));
  absl::Time drain_deadline = absl::InfiniteFuture();
  while (true) {
    if (g_signalled > (draining ? 1 : 0)) {
      // SIGTERM (once) drains first; anything else stops now.
      if (draining || !g_terminated || !RequestDrain(stub, registration)) return Stop::kSignalled;
      draining = true;
      drain_deadline = absl::Now() + drain_timeout;
      std::cerr << "worker " << worker_id << ": draining\n";
    }
    if (absl::Now() > drain_deadline) return Stop::kDrainTimedOut;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + interval * 4));
    internal::v1::HeartbeatRequest request;
    request.set_worker_id(worker_id);
    request.set_incarnation(registration.incarnation);
    internal::v1::HeartbeatResponse response;
    if (stub.Heartbeat(&context, request, &response).ok()) {
      if (!response.known()) return draining || response.retired() ? Stop::kDrained : Stop::kForgotten;
      last_contact = absl::Now();
    } else if (absl::Now() - last_contact > timeout) {
      return Stop::kUnreachable;
    }
    absl::SleepFor(interval);
  }
}

int Main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string form = absl::GetFlag(FLAGS_attention_form);
  if (form != "cheapest" && form != "absorbed" && form != "expanded") {
    std::cerr << "worker: --attention_form must be cheapest, absorbed or expanded, not \"" << form << "\"\n";
    return 2;
  }
  std::signal(SIGINT, HandleSignal);
  std::signal(SIGTERM, HandleSignal);
  const std::string device = absl::GetFlag(FLAGS_device);
  absl::StatusOr<std::unique_ptr<Ops>> ops = NewOps(device, absl::GetFlag(FLAGS_cuda_graphs));
  if (!ops.ok()) {
    std::cerr << "worker: " << ops.status() << "\n";
    return 1;
  }
  const int gpu = GpuIndex(device);
  const absl::StatusOr<int64_t> memory = MemoryBytes(gpu);
  if (!memory.ok()) {
    std::cerr << "worker: " << memory.status() << "\n";
    return 1;
  }
  std::optional<GpuMemory> gpu_memory;
  if (gpu >= 0) {
    gpu_memory = GpuMemory{.capacity_bytes = *memory,
                           .free_bytes = [gpu]() -> absl::StatusOr<int64_t> {
                             ASSIGN_OR_RETURN(const DeviceMemory device, CudaMemoryInfo(gpu));
                             return device.free_bytes;
                           },
                           .release_cached = [gpu] { return CudaReleaseCachedMemory(gpu); }};
  }
  absl::StatusOr<KeySet> secret = KeySet::FromFile(absl::GetFlag(FLAGS_cluster_secret_file));
  absl::Status exposure = secret.ok() ? CheckExposure("the Worker API", absl::GetFlag(FLAGS_host), !secret->open(),
                                                      absl::GetFlag(FLAGS_insecure), "--cluster_secret_file")
                                      : secret.status();
  if (!exposure.ok()) {
    std::cerr << "worker: " << exposure << "\n";
    return 1;
  }
  // After a partition heals the worker must be back within seconds: pings
  // every 2 s find a connection whose packets vanish (else TCP retransmits
  // into it for tens of seconds), connection attempts give up after 0.5 s
  // and repeat every 2 s at most (gRPC's defaults: 20 s and 2 minutes).
  grpc::ChannelArguments coordinator_args;
  PingAcrossPartitions(&coordinator_args);
  coordinator_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 500);
  coordinator_args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 500);
  coordinator_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  auto channel = AuthorizedChannel(absl::GetFlag(FLAGS_coordinator), secret->presented(), coordinator_args);
  GrpcRendezvousStore store(channel);
  WorkerService service(*std::move(ops), store, CommunicatorsFor(device, absl::GetFlag(FLAGS_host)),
                        {.transfer_chunk_delay = absl::Milliseconds(absl::GetFlag(FLAGS_transfer_chunk_delay_ms)),
                         .mock_compute = absl::GetFlag(FLAGS_mock_compute),
                         .mock_step_time = absl::Milliseconds(absl::GetFlag(FLAGS_mock_step_ms)),
                         .gpu_memory = std::move(gpu_memory),
                         .cluster_secret = *secret,
                         .attention_form = form == "absorbed"   ? AttentionForm::kAbsorbed
                                           : form == "expanded" ? AttentionForm::kExpanded
                                                                : AttentionForm::kCheapest});
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string listen = absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port));
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(256 << 20);
  builder.SetMaxSendMessageSize(256 << 20);
  AcceptPartitionPings(&builder);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "worker: cannot listen on " << listen << "\n";
    return 1;
  }
  const std::string address = absl::StrCat(absl::GetFlag(FLAGS_host), ":", port);
  auto stub = internal::v1::Coordinator::NewStub(channel);
  std::string gpu_uuid;
  if (gpu >= 0) {
    absl::StatusOr<std::string> uuid = CudaDeviceUuid(gpu);
    if (!uuid.ok()) {
      std::cerr << "worker: " << uuid.status() << "\n";
      return 1;
    }
    gpu_uuid = *uuid;
  }
  std::optional<Registration> registration = RegisterWithRetry(
      *stub, address, *memory, gpu_uuid, absl::Seconds(absl::GetFlag(FLAGS_coordinator_timeout_s)));
  while (registration.has_value()) {
    const int32_t worker_id = registration->worker_id;
    std::cerr << "worker " << worker_id << ": serving on " << address << "\n";
    const Stop stop = Heartbeat(*stub, *registration);
    if (stop != Stop::kForgotten && stop != Stop::kUnreachable) {
      std::cerr << "worker " << worker_id << ": stopping (" << StopReason(stop) << ")\n";
      server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
      return 0;
    }
    // Its weights stay loaded; the coordinator decides what it serves next.
    std::cerr << "worker " << worker_id << ": " << StopReason(stop) << "; registering again\n";
    registration = RegisterWithRetry(*stub, address, *memory, gpu_uuid,
                                     absl::Seconds(absl::GetFlag(FLAGS_reregister_timeout_s)));
  }
  std::cerr << "worker: could not register with " << absl::GetFlag(FLAGS_coordinator) << "\n";
  server->Shutdown();
  return 1;
}

}  // namespace
}  // namespace mlaserve

int main(int argc, char** argv) { return mlaserve::Main(argc, argv); }
