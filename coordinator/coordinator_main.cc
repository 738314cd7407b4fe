// The coordinator process: public gRPC and HTTP APIs, worker membership and
// the rendezvous store, the shard plan (engine groups of one or more workers),
// scheduling and routing.
#include <sys/resource.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <future>
#include <map>
#include <iostream>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/auth.h"
#include "common/grpc_keepalive.h"
#include "common/grpc_status.h"
#include "common/model_config.h"
#include "common/status_macros.h"
#include "coordinator/api/admin_service.h"
#include "coordinator/api/grpc_service.h"
#include "coordinator/serving/context_parallel.h"
#include "coordinator/serving/grpc_step_executor.h"
#include "coordinator/api/http_server.h"
#include "coordinator/cluster/plan_measurements.h"
#include "coordinator/serving/metrics.h"
#include "coordinator/cluster/rendezvous_service.h"
#include "coordinator/serving/serving_engine.h"
#include "coordinator/serving/step_trace.h"
#include "kernels/latent_row.h"
#include "coordinator/cluster/kv_sizing.h"
#include "coordinator/cluster/shard_planner.h"
#include "coordinator/cluster/weight_bytes.h"
#include "tokenizer/tokenizer.h"
#include "coordinator/cluster/worker_registry.h"

ABSL_FLAG(std::string, model, "", "model directory (config.json, safetensors, tokenizer.json)");
ABSL_FLAG(std::string, model_name, "", "name clients use for the model (default: the directory's name)");
ABSL_FLAG(std::string, host, "127.0.0.1", "address to serve the public API on (HTTP and gRPC)");
ABSL_FLAG(int, http_port, 8000, "OpenAI-compatible HTTP port");
ABSL_FLAG(int, grpc_port, 50051, "public gRPC API port");
ABSL_FLAG(std::string, internal_host, "127.0.0.1",
          "address to serve the cluster's internal services on (worker registration, rendezvous, admin)");
ABSL_FLAG(int, internal_port, 50052, "internal gRPC port: what workers' --coordinator names");
ABSL_FLAG(std::string, api_key_file, "",
          "client API keys, one per line: HTTP and public gRPC calls must carry one (Authorization: Bearer)");
ABSL_FLAG(std::string, cluster_secret_file, "",
          "the cluster secret (the same file as the workers'): required on every internal call, both ways");
ABSL_FLAG(std::string, admin_key_file, "", "keys of the Admin service (default: the cluster secret)");
ABSL_FLAG(bool, insecure, false, "serve a non-loopback address without credentials");
ABSL_FLAG(int, workers, 1, "workers to wait for; the shard planner forms engine groups from them");
ABSL_FLAG(int, tp, 0, "attention heads split this many ways in a group (0: the planner's choice)");
ABSL_FLAG(int, dp_attention, 0, "data-parallel attention replicas per group (0: the planner's choice)");
ABSL_FLAG(int, ep, 0, "routed experts split this many ways in a group (0: the planner's choice)");
ABSL_FLAG(std::string, plan_measurements, "",
          "a //:scale_bench scale.json: among the plans that fit, the planner takes the fastest measured on as many "
          "workers");
ABSL_FLAG(bool, random_weights, false, "workers make seeded random weights from --model's config.json (no checkpoint)");
ABSL_FLAG(uint64_t, random_seed, 0, "seed of --random_weights");
ABSL_FLAG(std::string, roles, "", "prefill/decode disaggregation, as prefill:N,decode:M engine groups (empty: every group does both)");
ABSL_FLAG(std::string, migration, "auto", "move a prefix cached by a busy group to the chosen one: auto (when the calibrated cost model says it is cheaper), always, never");
ABSL_FLAG(int64_t, cache_affinity_slack, 8,
          "a group (or an attention replica within one) caching a longer prefix wins while at most this many requests "
          "busier than the least loaded");
ABSL_FLAG(std::string, decode_context_parallel, "auto",
          "spread each attention replica's KV blocks over its head shards (tp times the tokens per replica; every "
          "token then attends in parts, combined across the shards): on, off, or auto (when one request of the "
          "model's whole context would not fit a replica otherwise). Needs --tp > 1, CPU workers (the CUDA kernels do "
          "not attend in parts yet) and mixed-role groups; it turns context-parallel prefill off in those groups");
ABSL_FLAG(std::string, kv_links, "gpus",
          "which workers move KV between them over a link made at start-up (for prefill/decode handoffs) or on first "
          "use, the others pulling over gRPC: gpus (workers on distinct GPUs, NCCL) or all (CPU workers too, over "
          "Gloo)");
ABSL_FLAG(double, transfer_timeout_s, 60, "a KV transfer between workers taking longer fails (the prefix is recomputed)");
ABSL_FLAG(double, comm_timeout_s, 30, "a collective waiting on a peer longer than this fails its group's step");
ABSL_FLAG(double, worker_wait_s, 120, "how long to wait for the workers to register");
ABSL_FLAG(double, heartbeat_timeout_s, 3, "a worker silent this long is dead");
ABSL_FLAG(int64_t, kv_blocks, 0,
          "KV cache blocks per attention replica (0: sized from the GPU memory the workers measure, see "
          "--gpu_memory_utilization; 256 when a group has a worker without a GPU)");
ABSL_FLAG(double, gpu_memory_utilization, 0.9,
          "share of each GPU's memory a worker may use in all (weights, activations, KV cache); the KV cache gets "
          "what is left of it after the weights and the largest step's activations");
ABSL_FLAG(std::string, weights_dtype, "auto",
          "how workers keep the weights: auto (as stored: an FP8 checkpoint's projections stay FP8), bf16, fp8");
ABSL_FLAG(std::string, kv_cache_dtype, "auto",
          "what the KV cache holds: auto or bf16 (the latents as computed), fp8 (e4m3 c_kv with a scale per "
          "128 values, bf16 k_rope: 656 bytes a token and layer at DeepSeek's dims against 1,152)");
ABSL_FLAG(int64_t, block_size, 64, "tokens per KV cache block");
ABSL_FLAG(int64_t, max_num_seqs, 64, "running sequences per engine step");
ABSL_FLAG(int64_t, max_batched_tokens, 0,
          "tokens per engine step of an attention replica (prefill chunks and decodes); 0: 8192 per group, "
          "a replica's share when context parallelism splits prompts over the replicas. Long prompts expand "
          "their whole context once per chunk, so smaller steps cost them time to first token");
ABSL_FLAG(int64_t, context_parallel_min_tokens, 4096,
          "in groups with attention replicas, a prompt with at least this many tokens still to compute is "
          "prefilled by all of them at once, in chunks of --max_batched_tokens per replica (0: never)");
ABSL_FLAG(std::string, step_trace, "",
          "write every engine step's shape and time to this CSV (what //:cluster_sim fits its costs to)");
ABSL_FLAG(int64_t, max_queued_requests, 1024, "requests admitted (waiting or running) before 429");
ABSL_FLAG(int, http_threads, 0,
          "HTTP request threads; a streamed response holds one for its whole length (0: --max_queued_requests + 64, "
          "so every admitted request can stream and a few more still get their 429); as many whole requests again "
          "may wait for one, and further ones get 429. /health and /metrics have threads of their own");
ABSL_FLAG(int, shutdown_grace_s, 30,
          "on SIGTERM or SIGINT, seconds the requests in flight get to finish while new ones are refused (503); a "
          "second signal stops at once");
ABSL_FLAG(int, http_max_connections, 8192,
          "open HTTP connections; one more is answered 503 (the soft descriptor limit is raised to allow them, up "
          "to the hard limit)");
ABSL_FLAG(int, http_header_timeout_s, 10,
          "seconds a request's headers may take to arrive, and its body three times that; slower ones get 408");

namespace mlaserve {
namespace {

// Descriptors the coordinator needs besides HTTP connections: gRPC channels
// and servers, files.
constexpr int kDescriptorsBesideHttp = 1024;

// Raises the soft descriptor limit so that `connections` HTTP connections
// fit (a default soft limit of 1024 would refuse them long before); returns
// how many fit under the hard limit.
int AllowConnections(int connections) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return connections;
  const rlim_t needed = static_cast<rlim_t>(connections) + kDescriptorsBesideHttp;
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < needed) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max == RLIM_INFINITY ? needed : std::min(needed, limit.rlim_max);
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  if (limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur >= needed) return connections;
  const int fit = std::max<int>(1, static_cast<int>(limit.rlim_cur) - kDescriptorsBesideHttp);
  std::cerr << "coordinator: the descriptor limit (ulimit -n " << limit.rlim_cur << ") allows " << fit
            << " HTTP connections, not --http_max_connections " << connections << "\n";
  return fit;
}

// The KV pool of groups with a worker that measures no GPU memory (CPU
// workers, mock compute), unless --kv_blocks says.
constexpr int64_t kCpuKvBlocks = 256;
// --max_batched_tokens 0: a group's steps (ReplicaStepTokens shares them
// among its replicas), as vLLM and SGLang step on H100s.
constexpr int64_t kDefaultGroupStepTokens = 8192;

// How many times SIGINT or SIGTERM came: the first starts a graceful
// shutdown, a second ends it at once.
volatile std::sig_atomic_t g_signalled = 0;
void HandleSignal(int) { g_signalled = g_signalled + 1; }

// What loading the worker's shard reported: the KV block size and, on a
// GPU, the memory it then holds.
absl::StatusOr<internal::v1::LoadShardResponse> LoadShard(const WorkerInfo& worker, const std::string& model_dir,
                                                          const GroupOptions& options, const ParallelPlan& plan,
                                                          int group_rank, const std::string& rendezvous_prefix) {
  grpc::ClientContext context;
  internal::v1::LoadShardRequest request;
  request.set_model_dir(model_dir);
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
  request.set_weights_dtype(absl::GetFlag(FLAGS_weights_dtype));
  request.set_kv_cache_dtype(absl::GetFlag(FLAGS_kv_cache_dtype));
  // A replica's step may also hold slices of the other replicas' split
  // chunks, one budget each at most (or one split chunk run alone).
  const bool split = SplitsPrompts(plan.dp_attention, options.scheduler.context_parallel_min_tokens);
  request.set_max_step_tokens(options.scheduler.max_batched_tokens * (split ? plan.dp_attention : 1));
  request.set_max_step_sequences(options.scheduler.max_num_seqs);
  internal::v1::LoadShardResponse response;
  absl::Status status = FromGrpcStatus(worker.stub->LoadShard(&context, request, &response));
  if (!status.ok()) return absl::Status(status.code(), absl::StrCat("worker ", worker.id, ": ", status.message()));
  return response;
}

absl::Status CreateCache(const WorkerInfo& worker, int64_t num_blocks, bool decode_context_parallel) {
  grpc::ClientContext context;
  internal::v1::CreateCacheRequest request;
  request.set_num_blocks(num_blocks);
  request.set_decode_context_parallel(decode_context_parallel);
  internal::v1::CreateCacheResponse response;
  absl::Status status = FromGrpcStatus(worker.stub->CreateCache(&context, request, &response));
  if (!status.ok()) return absl::Status(status.code(), absl::StrCat("worker ", worker.id, ": ", status.message()));
  return absl::OkStatus();
}

// What the shard planner needs to know of the workers' format and memory.
absl::StatusOr<PlanRequest> MakePlanRequest(const ModelConfig& config, bool gpu, int64_t block_size) {
  // Random weights are made unquantized (FP8 only when asked for).
  ModelConfig stored = config;
  if (absl::GetFlag(FLAGS_random_weights)) stored.fp8_block_rows = stored.fp8_block_cols = 0;
  ASSIGN_OR_RETURN(const WeightFormat weights, ChooseWeightFormat(stored, absl::GetFlag(FLAGS_weights_dtype), gpu));
  ASSIGN_OR_RETURN(const KvCacheDtype kv_dtype, ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype)));
  PlanRequest request{
      .tp = absl::GetFlag(FLAGS_tp),
      .dp_attention = absl::GetFlag(FLAGS_dp_attention),
      .ep = absl::GetFlag(FLAGS_ep),
      .weights = weights,
      .kv_bytes_per_token = config.num_hidden_layers * LatentRowBytes(config.kv_lora_rank, config.qk_rope_head_dim,
                                                                      weights.dense_bytes, kv_dtype)};
  if (gpu) {
    request.memory_utilization = absl::GetFlag(FLAGS_gpu_memory_utilization);
    request.reserve_bytes = kGpuReserveBytes;
  }
  // Sized from memory, the cache must hold at least one sequence of the
  // model's whole context.
  const int64_t blocks = absl::GetFlag(FLAGS_kv_blocks) > 0 ? absl::GetFlag(FLAGS_kv_blocks) : gpu ? 0 : kCpuKvBlocks;
  request.kv_pool_tokens = blocks * block_size;
  request.kv_context = config.max_position_embeddings;
  if (const std::string path = absl::GetFlag(FLAGS_plan_measurements); !path.empty()) {
    ASSIGN_OR_RETURN(request.measured, ReadPlanMeasurements(path));
  }
  return request;
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

// The groups the cluster is planned to have, fixed when it starts.
struct GroupShape {
  int groups = 0;
  ParallelPlan plan;
  GroupOptions options;
  std::map<std::string, int> workers_per_gpu;  // from the first workers: GPU sharing
};

// The values of every one of `futures`, waited for even after one fails (so
// that no call is still running when the caller moves on), or the first error.
template <typename T>
absl::StatusOr<std::vector<T>> WaitForAll(std::vector<std::future<absl::StatusOr<T>>>& futures) {
  std::vector<T> values;
  absl::Status failed;
  for (auto& future : futures) {
    absl::StatusOr<T> value = future.get();
    if (value.ok()) values.push_back(*std::move(value));
    if (!value.ok() && failed.ok()) failed = value.status();
  }
  if (!failed.ok()) return failed;
  return values;
}

// WaitForAll of calls that return no value.
absl::Status WaitForAll(std::vector<std::future<absl::Status>>& futures) {
  absl::Status failed;
  for (auto& future : futures) {
    const absl::Status status = future.get();
    if (failed.ok()) failed = status;
  }
  return failed;
}

// Where group `id`'s ranks meet in the rendezvous store.
std::string RendezvousPrefix(int32_t id) { return absl::StrCat("group", id); }

// Has `members` (a group's ranks, in rank order) load their shards
// concurrently (they meet in the rendezvous store under "group<id>"), sizes
// the group's KV pool from what they measured, has them allocate it and adds
// the group. Returns the KV block size in bytes.
absl::StatusOr<int64_t> FormGroup(int32_t id, const std::vector<WorkerInfo>& members, const GroupShape& shape,
                                  GroupRole role, const ModelConfig& config, const std::string& model_dir,
                                  ServingEngine& engine, ServingMetrics& metrics) {
  const std::string prefix = RendezvousPrefix(id);
  std::vector<std::future<absl::StatusOr<internal::v1::LoadShardResponse>>> loads;
  for (size_t rank = 0; rank < members.size(); ++rank) {
    loads.push_back(std::async(std::launch::async, [&, rank] {
      return LoadShard(members[rank], model_dir, shape.options, shape.plan, static_cast<int>(rank), prefix);
    }));
  }
  ASSIGN_OR_RETURN(const std::vector<internal::v1::LoadShardResponse> loaded, WaitForAll(loads));
  const int64_t bytes_per_block = loaded[0].bytes_per_block();
  std::vector<RankMemoryReport> reports;
  for (size_t rank = 0; rank < members.size(); ++rank) {
    const internal::v1::MemoryReport& m = loaded[rank].memory();
    const auto sharers = shape.workers_per_gpu.find(members[rank].gpu_uuid);
    reports.push_back({.worker_id = members[rank].id,
                       .capacity_bytes = m.capacity_bytes(),
                       .used_bytes = m.used_bytes(),
                       .free_bytes = m.free_bytes(),
                       .sharers = sharers == shape.workers_per_gpu.end() ? 1 : std::max(1, sharers->second)});
  }
  ASSIGN_OR_RETURN(const KvSizing sizing,
                   SizeKvPool(reports, {.kv_blocks = absl::GetFlag(FLAGS_kv_blocks),
                                        .default_blocks = kCpuKvBlocks,
                                        .gpu_memory_utilization = absl::GetFlag(FLAGS_gpu_memory_utilization),
                                        .bytes_per_block = bytes_per_block}));
  ASSIGN_OR_RETURN(const DecodeContextParallel dcp_mode,
                   ParseDecodeContextParallel(absl::GetFlag(FLAGS_decode_context_parallel)));
  const bool attends_in_parts = std::none_of(members.begin(), members.end(), [](const WorkerInfo& m) {
    return absl::StartsWith(m.device, "cuda");  // the CUDA kernels do not attend in parts yet
  });
  ASSIGN_OR_RETURN(const bool spread,
                   UseDecodeContextParallel(dcp_mode, {.tp = shape.options.tp,
                                                       .attends_in_parts = attends_in_parts,
                                                       .mixed_role = role == GroupRole::kMixed,
                                                       .replica_tokens = sizing.num_blocks * shape.options.block_size,
                                                       .max_context = config.max_position_embeddings}));
  std::vector<std::future<absl::Status>> creates;
  for (const WorkerInfo& member : members) {
    creates.push_back(std::async(std::launch::async, [&member, &sizing, spread] {
      return CreateCache(member, sizing.num_blocks, spread);
    }));
  }
  RETURN_IF_ERROR(WaitForAll(creates));
  GroupOptions options = shape.options;
  // Spread over its head shards, a replica holds tp pools' blocks.
  const int64_t replica_blocks = sizing.num_blocks * (spread ? options.tp : 1);
  const int64_t tokens = replica_blocks * options.block_size;
  std::cerr << absl::StreamFormat(
      "coordinator: group %d: KV cache of %d blocks = %d tokens per attention replica, %d in the group's %d "
      "replica(s); %.2f GiB per rank (from %s)%s\n",
      id, replica_blocks, tokens, tokens * options.dp_attention, options.dp_attention,
      static_cast<double>(sizing.num_blocks * bytes_per_block) / (1 << 30), sizing.ToString(),
      spread ? absl::StrCat("; decode context parallelism: its blocks dealt over the replica's ", options.tp,
                            " head shards")
             : "");
  options.num_blocks = replica_blocks;
  options.decode_context_parallel = spread;
  // A context-parallel chunk writes its whole KV on every rank of a replica.
  if (spread) options.scheduler.context_parallel_min_tokens = 0;
  options.role = role;
  auto executor = std::make_unique<GrpcStepExecutor>(members, options.tp, options.step_timeout);
  engine.AddGroup(std::make_unique<EngineGroup>(id, members, std::move(executor), options, config, metrics));
  return bytes_per_block;
}

// Plans the cluster and forms its groups (their loads concurrent). Returns
// the groups' shape and the KV block size in bytes.
absl::StatusOr<std::pair<GroupShape, int64_t>> StartGroups(const std::vector<WorkerInfo>& workers,
                                                           const ModelConfig& config, const std::string& model_dir,
                                                           GroupOptions options, ServingEngine& engine,
                                                           ServingMetrics& metrics) {
  std::vector<int64_t> memory;
  GroupShape shape;
  bool gpu = true;
  for (const WorkerInfo& w : workers) {
    memory.push_back(w.memory_bytes);
    gpu = gpu && !w.gpu_uuid.empty();
    if (!w.gpu_uuid.empty()) ++shape.workers_per_gpu[w.gpu_uuid];
  }
  ASSIGN_OR_RETURN(const PlanRequest request, MakePlanRequest(config, gpu, options.block_size));
  ASSIGN_OR_RETURN(const ClusterPlan cluster, PlanCluster(config, memory, request));
  std::cerr << "coordinator: shard plan: " << cluster.ToString() << " (" << request.weights.name()
            << " weights; estimates until the workers measure); chosen as " << cluster.why << "\n";
  ASSIGN_OR_RETURN(std::vector<GroupRole> roles, ParseRoles(absl::GetFlag(FLAGS_roles), cluster.num_groups));
  options.tp = cluster.plan.tp;
  options.dp_attention = cluster.plan.dp_attention;
  options.scheduler.context_parallel_replicas = cluster.plan.dp_attention;
  if (options.scheduler.max_batched_tokens == 0) {
    options.scheduler.max_batched_tokens = ReplicaStepTokens(kDefaultGroupStepTokens, cluster.plan.dp_attention,
                                                             options.scheduler.context_parallel_min_tokens);
  }
  std::cerr << "coordinator: engine steps of up to " << options.scheduler.max_batched_tokens
            << " tokens per attention replica\n";
  shape.groups = cluster.num_groups;
  shape.plan = cluster.plan;
  shape.options = options;
  const size_t size = cluster.plan.group_size();
  std::vector<std::future<absl::StatusOr<int64_t>>> forms;
  for (size_t first = 0; first + size <= workers.size(); first += size) {
    std::vector<WorkerInfo> members(workers.begin() + first, workers.begin() + first + size);
    forms.push_back(std::async(std::launch::async, [&, members, first] {
      return FormGroup(members[0].id, members, shape, roles[first / size], config, model_dir, engine, metrics);
    }));
  }
  ASSIGN_OR_RETURN(const std::vector<int64_t> bytes_per_block, WaitForAll(forms));
  engine.SetPlannedGroups(cluster.num_groups);
  int64_t tokens = 0;
  for (const GroupKvCapacity& group : engine.KvCapacity()) tokens += group.tokens();
  std::cerr << absl::StreamFormat(
      "coordinator: %sKV cache size: %d tokens; maximum concurrency for %d tokens per request: %.2fx\n",
      gpu ? "GPU " : "", tokens, engine.max_context(),
      static_cast<double>(tokens) / static_cast<double>(engine.max_context()));
  return std::make_pair(shape, bytes_per_block[0]);
}

// One look at the cluster: forgets the rendezvous keys of groups that ended,
// and while fewer groups serve than planned and enough live workers belong to
// none (a failed group's survivors, replacements, workers back after a
// partition), forms a group of the shape from them (mixed role). Groups that
// ended stay in the engine, never routed to, so nothing they hold dangles.
void KeepGroups(const GroupShape& shape, int32_t* next_group_id, const ModelConfig& config,
                const std::string& model_dir, WorkerRegistry& registry, RendezvousService& rendezvous,
                ServingEngine& engine, ServingMetrics& metrics) {
  ServingEngine::GroupCensus census = engine.TakeCensus();
  for (int32_t id : census.newly_ended) {
    rendezvous.DeletePrefix(RendezvousPrefix(id) + "/");
    std::cerr << "coordinator: group " << id << " ended; " << census.serving_groups << " of " << shape.groups
              << " groups serve\n";
  }
  if (census.serving_groups >= shape.groups) return;
  std::vector<WorkerInfo> free;
  for (const auto& [worker, live] : registry.List()) {
    if (live && !census.busy_workers.contains(worker.id)) free.push_back(worker);
  }
  const size_t size = shape.plan.group_size();
  if (free.size() < size) return;
  free.resize(size);
  const int32_t id = (*next_group_id)++;
  std::cerr << "coordinator: forming group " << id << " of " << shape.plan.ToString() << " from " << size
            << " free worker(s)\n";
  absl::StatusOr<int64_t> formed =
      FormGroup(id, free, shape, GroupRole::kMixed, config, model_dir, engine, metrics);
  if (!formed.ok()) {
    rendezvous.DeletePrefix(RendezvousPrefix(id) + "/");
    std::cerr << "coordinator: group " << id << " did not form (" << formed.status() << "); trying again\n";
  }
}

// A gRPC server of `services` listening on `address`.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& address,
                                                              const std::vector<grpc::Service*>& services) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  AcceptPartitionPings(&builder);
  for (grpc::Service* service : services) builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return absl::UnavailableError("cannot listen on " + address);
  return server;
}

absl::Status Run() {
  const std::string model_dir = std::filesystem::absolute(absl::GetFlag(FLAGS_model)).string();
  if (absl::GetFlag(FLAGS_model).empty()) return absl::InvalidArgumentError("--model is required");
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir + "/config.json"));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromFile(model_dir + "/tokenizer.json"));
  std::string model_name = absl::GetFlag(FLAGS_model_name);
  if (model_name.empty()) model_name = std::filesystem::path(model_dir).filename().string();

  ASSIGN_OR_RETURN(KeySet api_keys, KeySet::FromFile(absl::GetFlag(FLAGS_api_key_file)));
  ASSIGN_OR_RETURN(KeySet cluster_secret, KeySet::FromFile(absl::GetFlag(FLAGS_cluster_secret_file)));
  ASSIGN_OR_RETURN(KeySet admin_keys, KeySet::FromFile(absl::GetFlag(FLAGS_admin_key_file)));
  if (admin_keys.open()) admin_keys = cluster_secret;
  const bool insecure = absl::GetFlag(FLAGS_insecure);
  RETURN_IF_ERROR(CheckExposure("the public API", absl::GetFlag(FLAGS_host), !api_keys.open(), insecure,
                                "--api_key_file"));
  RETURN_IF_ERROR(CheckExposure("the internal services", absl::GetFlag(FLAGS_internal_host),
                                !cluster_secret.open(), insecure, "--cluster_secret_file"));

  ServingMetrics metrics;
  WorkerRegistry registry(absl::Seconds(absl::GetFlag(FLAGS_heartbeat_timeout_s)), cluster_secret);
  const std::string migration = absl::GetFlag(FLAGS_migration);
  if (migration != "auto" && migration != "always" && migration != "never") {
    return absl::InvalidArgumentError("--migration must be auto, always or never");
  }
  ASSIGN_OR_RETURN(const KvLinks kv_links, ParseKvLinks(absl::GetFlag(FLAGS_kv_links)));
  RETURN_IF_ERROR(ParseDecodeContextParallel(absl::GetFlag(FLAGS_decode_context_parallel)).status());
  if (absl::GetFlag(FLAGS_max_batched_tokens) < 0 || absl::GetFlag(FLAGS_max_num_seqs) < 1) {
    return absl::InvalidArgumentError("--max_batched_tokens must be 0 (automatic) or more, --max_num_seqs 1 or more");
  }

  // Declared before the engine: its groups record into it until they stop.
  std::unique_ptr<StepTrace> step_trace;
  if (!absl::GetFlag(FLAGS_step_trace).empty()) {
    ASSIGN_OR_RETURN(step_trace, StepTrace::Create(absl::GetFlag(FLAGS_step_trace)));
  }
  ServingEngine engine(*tokenizer, config,
                       {.model_name = model_name,
                        .migration = migration == "always"  ? MigrationPolicy::kAlways
                                     : migration == "never" ? MigrationPolicy::kNever
                                                            : MigrationPolicy::kAuto,
                        .transfer_timeout = absl::Seconds(absl::GetFlag(FLAGS_transfer_timeout_s)),
                        .kv_links = kv_links,
                        .max_queued_requests = absl::GetFlag(FLAGS_max_queued_requests),
                        .cache_affinity_slack = absl::GetFlag(FLAGS_cache_affinity_slack)},
                       metrics, &registry);
  registry.OnDeath([&engine](int32_t worker_id) { engine.OnWorkerDeath(worker_id); });
  registry.OnDrain([&engine](int32_t worker_id) { return engine.DrainWorker(worker_id); });
  AdminService admin(engine, registry, admin_keys);
  GroupOptions group_options{.block_size = absl::GetFlag(FLAGS_block_size),
                             .scheduler = {.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs),
                                           .max_batched_tokens = absl::GetFlag(FLAGS_max_batched_tokens),
                                           .context_parallel_min_tokens =
                                               absl::GetFlag(FLAGS_context_parallel_min_tokens)},
                             .trace = step_trace.get(),
                             .cache_affinity_slack = absl::GetFlag(FLAGS_cache_affinity_slack)};
  GrpcService public_api(engine, metrics, group_options.block_size, api_keys);
  RendezvousService rendezvous(absl::Seconds(600), cluster_secret);

  // Two servers, so that the internal services can be bound where clients
  // cannot reach them.
  const std::string public_address = absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_grpc_port));
  const std::string internal_address =
      absl::StrCat(absl::GetFlag(FLAGS_internal_host), ":", absl::GetFlag(FLAGS_internal_port));
  ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> internal_server,
                   StartGrpcServer(internal_address, {&registry, &rendezvous, &admin}));
  ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> public_server, StartGrpcServer(public_address, {&public_api}));
  std::cerr << "coordinator: public gRPC on " << public_address << ", internal on " << internal_address
            << ", waiting for " << absl::GetFlag(FLAGS_workers) << " workers\n";

  ASSIGN_OR_RETURN(std::vector<WorkerInfo> workers,
                   registry.WaitForWorkers(absl::GetFlag(FLAGS_workers), absl::Seconds(absl::GetFlag(FLAGS_worker_wait_s))));
  ASSIGN_OR_RETURN(const auto started, StartGroups(workers, config, model_dir, group_options, engine, metrics));
  const auto& [shape, bytes_per_block] = started;
  const absl::Time links_start = absl::Now();
  if (const int links = engine.ConnectHandoffLinks(); links > 0) {
    std::cerr << absl::StreamFormat("coordinator: %d KV link(s) for prefill/decode handoffs made in %.2f s\n", links,
                                    absl::ToDoubleSeconds(absl::Now() - links_start));
  }
  if (migration == "auto") {
    if (absl::Status calibrated = engine.Calibrate(bytes_per_block); !calibrated.ok()) {
      std::cerr << "coordinator: KV migration not calibrated (" << calibrated << "); it moves whenever it can\n";
    }
  }

  HttpOptions http_options;
  http_options.api_keys = api_keys;
  GateOptions& connections = http_options.connections;
  connections.request_threads = absl::GetFlag(FLAGS_http_threads) > 0
                                    ? absl::GetFlag(FLAGS_http_threads)
                                    : static_cast<int>(absl::GetFlag(FLAGS_max_queued_requests)) + 64;
  connections.max_waiting = connections.request_threads;
  connections.max_connections = AllowConnections(absl::GetFlag(FLAGS_http_max_connections));
  connections.header_timeout = absl::Seconds(absl::GetFlag(FLAGS_http_header_timeout_s));
  connections.body_timeout = 3 * connections.header_timeout;
  HttpServer http(engine, metrics, http_options);
  RETURN_IF_ERROR(http.Start(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_http_port)));
  std::cerr << "coordinator: serving " << model_name << " on http://" << absl::GetFlag(FLAGS_host) << ":"
            << http.port() << " with " << workers.size() << " workers\n";
  int32_t next_group_id = 0;
  for (const auto& [worker, live] : registry.List()) next_group_id = std::max(next_group_id, worker.id + 1);
  absl::Time next_look = absl::Now();
  while (!g_signalled) {
    absl::SleepFor(absl::Milliseconds(100));
    if (absl::Now() < next_look) continue;
    KeepGroups(shape, &next_group_id, config, model_dir, registry, rendezvous, engine, metrics);
    next_look = absl::Now() + absl::Seconds(1);
  }
  // Gracefully, as a rolling restart or a Kubernetes pod termination wants:
  // new requests get 503 and /health says so, those in flight finish within
  // --shutdown_grace_s; a second signal cuts the wait short.
  const absl::Duration grace = absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_s));
  std::cerr << "coordinator: shutting down; requests in flight get up to " << absl::FormatDuration(grace)
            << " to finish\n";
  engine.StopAdmitting();
  const absl::Time deadline = absl::Now() + grace;
  const int signals = g_signalled;
  int64_t running = 0;
  while ((running = engine.AwaitIdle(absl::Milliseconds(200))) > 0 && absl::Now() < deadline &&
         g_signalled == signals) {
  }
  if (running > 0) std::cerr << "coordinator: cancelling " << running << " requests still running\n";
  http.AwaitIdle(std::max(absl::ZeroDuration(), std::min(deadline - absl::Now(), absl::Seconds(5))));
  http.Stop();
  registry.OnDeath(nullptr);  // the engine goes away before the registry
  registry.OnDrain(nullptr);
  public_server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  internal_server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
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
