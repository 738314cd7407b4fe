// The coordinator process: public gRPC and HTTP APIs, worker membership and
// the rendezvous store, the shard plan (engine groups of one or more workers),
// scheduling and routing.
#include <csignal>
#include <filesystem>
#include <future>
#include <iostream>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/model_config.h"
#include "common/status_macros.h"
#include "coordinator/api/admin_service.h"
#include "coordinator/api/grpc_service.h"
#include "coordinator/serving/grpc_step_executor.h"
#include "coordinator/api/http_server.h"
#include "coordinator/serving/metrics.h"
#include "coordinator/cluster/rendezvous_service.h"
#include "coordinator/serving/serving_engine.h"
#include "coordinator/cluster/shard_planner.h"
#include "tokenizer/tokenizer.h"
#include "coordinator/cluster/worker_registry.h"

ABSL_FLAG(std::string, model, "", "model directory (config.json, safetensors, tokenizer.json)");
ABSL_FLAG(std::string, model_name, "", "name clients use for the model (default: the directory's name)");
ABSL_FLAG(std::string, host, "127.0.0.1", "address to serve on");
ABSL_FLAG(int, http_port, 8000, "OpenAI-compatible HTTP port");
ABSL_FLAG(int, grpc_port, 50051, "gRPC port (public API and worker registration)");
ABSL_FLAG(int, workers, 1, "workers to wait for; the shard planner forms engine groups from them");
ABSL_FLAG(int, tp, 0, "attention heads split this many ways in a group (0: the planner's choice)");
ABSL_FLAG(int, dp_attention, 0, "data-parallel attention replicas per group (0: the planner's choice)");
ABSL_FLAG(int, ep, 0, "routed experts split this many ways in a group (0: the planner's choice)");
ABSL_FLAG(bool, random_weights, false, "workers make seeded random weights from --model's config.json (no checkpoint)");
ABSL_FLAG(uint64_t, random_seed, 0, "seed of --random_weights");
ABSL_FLAG(std::string, roles, "", "prefill/decode disaggregation, as prefill:N,decode:M engine groups (empty: every group does both)");
ABSL_FLAG(std::string, migration, "auto", "move a prefix cached by a busy group to the chosen one: auto (when the calibrated cost model says it is cheaper), always, never");
ABSL_FLAG(int64_t, cache_affinity_slack, 8, "a group caching a longer prefix wins while at most this many requests busier than the least loaded");
ABSL_FLAG(double, transfer_timeout_s, 60, "a KV transfer between workers taking longer fails (the prefix is recomputed)");
ABSL_FLAG(double, comm_timeout_s, 30, "a collective waiting on a peer longer than this fails its group's step");
ABSL_FLAG(double, worker_wait_s, 120, "how long to wait for the workers to register");
ABSL_FLAG(double, heartbeat_timeout_s, 3, "a worker silent this long is dead");
ABSL_FLAG(int64_t, kv_blocks, 256, "KV cache blocks per worker (per attention replica)");
ABSL_FLAG(int64_t, block_size, 64, "tokens per KV cache block");
ABSL_FLAG(int64_t, max_num_seqs, 64, "running sequences per engine step");
ABSL_FLAG(int64_t, max_batched_tokens, 512, "tokens per engine step (prefill chunks and decodes)");
ABSL_FLAG(int64_t, max_queued_requests, 1024, "requests admitted (waiting or running) before 429");
ABSL_FLAG(int, http_threads, 0,
          "HTTP connection threads; a streamed response holds one for its whole length (0: --max_queued_requests "
          "+ 64, so every admitted request can stream and a few more connections still get their 429 or /health)");

namespace mlaserve {
namespace {

volatile std::sig_atomic_t g_signalled = 0;
void HandleSignal(int) { g_signalled = 1; }

// The KV block size in bytes on success.
absl::StatusOr<int64_t> LoadShard(const WorkerInfo& worker, const std::string& model_dir, const GroupOptions& options,
                                  const ParallelPlan& plan, int group_rank, const std::string& rendezvous_prefix) {
  grpc::ClientContext context;
  internal::v1::LoadShardRequest request;
  request.set_model_dir(model_dir);
  request.set_num_blocks(options.num_blocks);
  request.set_block_size(options.block_size);
  request.set_group_rank(group_rank);
  request.set_group_size(plan.group_size());
  request.set_tp(plan.tp);
  request.set_dp_attention(plan.dp_attention);
  request.set_ep(plan.ep);
  request.set_rendezvous_prefix(rendezvous_prefix);
  request.set_comm_timeout_s(absl::GetFlag(FLAGS_comm_timeout_s));
  request.set_random_weights(absl::GetFlag(FLAGS_random_weights));
  request.set_random_seed(absl::GetFlag(FLAGS_random_seed));
  internal::v1::LoadShardResponse response;
  absl::Status status = FromGrpcStatus(worker.stub->LoadShard(&context, request, &response));
  if (!status.ok()) return absl::Status(status.code(), absl::StrCat("worker ", worker.id, ": ", status.message()));
  return response.bytes_per_block();
}

// --roles prefill:N,decode:M as the role of each of `num_groups` groups.
absl::StatusOr<std::vector<GroupRole>> ParseRoles(const std::string& text, int num_groups) {
  if (text.empty()) return std::vector<GroupRole>(num_groups, GroupRole::kMixed);
  std::vector<GroupRole> roles;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(part, ':');
    int count = 0;
    if (!absl::SimpleAtoi(kv.second, &count) || count < 0 || (kv.first != "prefill" && kv.first != "decode")) {
      return absl::InvalidArgumentError(absl::StrCat("--roles: \"", std::string(part), "\" is not prefill:N or decode:N"));
    }
    roles.insert(roles.end(), count, kv.first == "prefill" ? GroupRole::kPrefill : GroupRole::kDecode);
  }
  if (static_cast<int>(roles.size()) != num_groups) {
    return absl::InvalidArgumentError(absl::StrCat("--roles names ", roles.size(), " groups; the plan has ", num_groups));
  }
  return roles;
}

// Plans the cluster, has every worker load its shard (the ranks of a group
// concurrently: they meet in the rendezvous store) and adds the groups.
// Returns the KV block size in bytes.
absl::StatusOr<int64_t> StartGroups(const std::vector<WorkerInfo>& workers, const ModelConfig& config,
                                    const std::string& model_dir, GroupOptions options, ServingEngine& engine,
                                    ServingMetrics& metrics) {
  std::vector<int64_t> memory;
  for (const WorkerInfo& w : workers) memory.push_back(w.memory_bytes);
  ASSIGN_OR_RETURN(ClusterPlan cluster,
                   PlanCluster(config, memory,
                               {.tp = absl::GetFlag(FLAGS_tp),
                                .dp_attention = absl::GetFlag(FLAGS_dp_attention),
                                .ep = absl::GetFlag(FLAGS_ep),
                                .kv_bytes_per_token = config.latent_dim() * config.num_hidden_layers *
                                                      static_cast<int64_t>(sizeof(float)),
                                .kv_pool_tokens = options.num_blocks * options.block_size}));
  std::cerr << "coordinator: shard plan: " << cluster.ToString() << "\n";
  ASSIGN_OR_RETURN(std::vector<GroupRole> roles, ParseRoles(absl::GetFlag(FLAGS_roles), cluster.num_groups));
  options.tp = cluster.plan.tp;
  options.dp_attention = cluster.plan.dp_attention;
  const int size = cluster.plan.group_size();
  std::vector<std::future<absl::StatusOr<int64_t>>> loads;
  for (size_t i = 0; i < workers.size(); ++i) {
    const std::string prefix = absl::StrCat("group", workers[i - i % size].id);
    loads.push_back(std::async(std::launch::async, [&, i, prefix] {
      return LoadShard(workers[i], model_dir, options, cluster.plan, static_cast<int>(i % size), prefix);
    }));
  }
  int64_t bytes_per_block = 0;
  for (auto& load : loads) {
    ASSIGN_OR_RETURN(bytes_per_block, load.get());
  }
  for (size_t first = 0; first < workers.size(); first += size) {
    std::vector<WorkerInfo> members(workers.begin() + first, workers.begin() + first + size);
    options.role = roles[first / size];
    auto executor = std::make_unique<GrpcStepExecutor>(members, options.tp, options.step_timeout);
    engine.AddGroup(std::make_unique<EngineGroup>(members[0].id, std::move(members), std::move(executor), options,
                                                  config, metrics));
  }
  return bytes_per_block;
}

absl::Status Run() {
  const std::string model_dir = std::filesystem::absolute(absl::GetFlag(FLAGS_model)).string();
  if (absl::GetFlag(FLAGS_model).empty()) return absl::InvalidArgumentError("--model is required");
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir + "/config.json"));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromFile(model_dir + "/tokenizer.json"));
  std::string model_name = absl::GetFlag(FLAGS_model_name);
  if (model_name.empty()) model_name = std::filesystem::path(model_dir).filename().string();

  ServingMetrics metrics;
  WorkerRegistry registry(absl::Seconds(absl::GetFlag(FLAGS_heartbeat_timeout_s)));
  const std::string migration = absl::GetFlag(FLAGS_migration);
  if (migration != "auto" && migration != "always" && migration != "never") {
    return absl::InvalidArgumentError("--migration must be auto, always or never");
  }
  ServingEngine engine(*tokenizer, config,
                       {.model_name = model_name,
                        .migration = migration == "always"  ? MigrationPolicy::kAlways
                                     : migration == "never" ? MigrationPolicy::kNever
                                                            : MigrationPolicy::kAuto,
                        .transfer_timeout = absl::Seconds(absl::GetFlag(FLAGS_transfer_timeout_s)),
                        .max_queued_requests = absl::GetFlag(FLAGS_max_queued_requests),
                        .cache_affinity_slack = absl::GetFlag(FLAGS_cache_affinity_slack)},
                       metrics, &registry);
  registry.OnDeath([&engine](int32_t worker_id) { engine.OnWorkerDeath(worker_id); });
  registry.OnDrain([&engine](int32_t worker_id) { return engine.DrainWorker(worker_id); });
  AdminService admin(engine, registry);
  GroupOptions group_options{.num_blocks = absl::GetFlag(FLAGS_kv_blocks),
                             .block_size = absl::GetFlag(FLAGS_block_size),
                             .scheduler = {.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs),
                                           .max_batched_tokens = absl::GetFlag(FLAGS_max_batched_tokens)}};
  GrpcService public_api(engine, metrics, group_options.block_size);

  grpc::ServerBuilder builder;
  const std::string grpc_address = absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_grpc_port));
  int grpc_port = 0;
  builder.AddListeningPort(grpc_address, grpc::InsecureServerCredentials(), &grpc_port);
  RendezvousService rendezvous;
  builder.RegisterService(&registry);
  builder.RegisterService(&public_api);
  builder.RegisterService(&rendezvous);
  builder.RegisterService(&admin);
  std::unique_ptr<grpc::Server> grpc_server = builder.BuildAndStart();
  if (grpc_server == nullptr || grpc_port == 0) return absl::UnavailableError("cannot listen on " + grpc_address);
  std::cerr << "coordinator: gRPC on " << grpc_address << ", waiting for " << absl::GetFlag(FLAGS_workers)
            << " workers\n";

  ASSIGN_OR_RETURN(std::vector<WorkerInfo> workers,
                   registry.WaitForWorkers(absl::GetFlag(FLAGS_workers), absl::Seconds(absl::GetFlag(FLAGS_worker_wait_s))));
  ASSIGN_OR_RETURN(const int64_t bytes_per_block, StartGroups(workers, config, model_dir, group_options, engine, metrics));
  if (migration == "auto") {
    if (absl::Status calibrated = engine.Calibrate(bytes_per_block); !calibrated.ok()) {
      std::cerr << "coordinator: KV migration not calibrated (" << calibrated << "); it moves whenever it can\n";
    }
  }

  HttpOptions http_options;
  http_options.worker_threads = absl::GetFlag(FLAGS_http_threads) > 0
                                    ? absl::GetFlag(FLAGS_http_threads)
                                    : static_cast<int>(absl::GetFlag(FLAGS_max_queued_requests)) + 64;
  HttpServer http(engine, metrics, http_options);
  RETURN_IF_ERROR(http.Start(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_http_port)));
  std::cerr << "coordinator: serving " << model_name << " on http://" << absl::GetFlag(FLAGS_host) << ":"
            << http.port() << " with " << workers.size() << " workers\n";
  while (!g_signalled) absl::SleepFor(absl::Milliseconds(100));
  std::cerr << "coordinator: shutting down\n";
  http.Stop();
  registry.OnDeath(nullptr);  // the engine goes away before the registry
  registry.OnDrain(nullptr);
  grpc_server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  return absl::OkStatus();
}

}  // namespace
}  // namespace mlaserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::signal(SIGINT, mlaserve::HandleSignal);
  std::signal(SIGTERM, mlaserve::HandleSignal);
  absl::Status status = mlaserve::Run();
  if (!status.ok()) {
    std::cerr << "coordinator: " << status << "\n";
    return 1;
  }
  return 0;
}
