// Prints the shard plan and per-GPU memory for a model on a cluster of GPUs
// without starting one: every plan the coordinator's planner weighs, with
// each rank's weights and the KV room left, the tokens that fit and how many
// sequences of --max_context; then the plan it chooses for --batch such
// sequences per group.
//
//   bazel run //coordinator:plan -- --model_config=tests/testdata/configs/deepseek-v3-fp8.json \
//       --gpus=8 --gpu_memory_gib=141 --weights_dtype=fp8 --max_context=131072 --batch=32
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "common/model_config.h"
#include "common/status_macros.h"
#include "common/user_path.h"
#include "coordinator/cluster/plan_measurements.h"
#include "coordinator/cluster/shard_planner.h"
#include "coordinator/cluster/weight_bytes.h"
#include "kernels/latent_row.h"

ABSL_FLAG(std::string, model_config, "", "the model's config.json, or a directory holding it");
ABSL_FLAG(int, gpus, 8, "GPUs in the cluster (one worker each)");
ABSL_FLAG(double, gpu_memory_gib, 80, "memory of each GPU, GiB");
ABSL_FLAG(double, gpu_memory_utilization, 0.9, "share of each GPU's memory for weights, reserve and KV (as the coordinator's flag)");
ABSL_FLAG(double, reserve_gib, static_cast<double>(mlaserve::kGpuReserveBytes) / (1 << 30),
          "per GPU besides weights and KV: activations, CUDA graphs, buffers, GiB");
ABSL_FLAG(std::string, weights_dtype, "auto", "how workers keep the weights: auto (as stored), bf16 or fp8");
ABSL_FLAG(std::string, kv_cache_dtype, "auto", "what the KV cache holds: auto or bf16, fp8 (as the coordinator's flag)");
ABSL_FLAG(int64_t, max_context, 0, "tokens per sequence (0: the model's max_position_embeddings)");
ABSL_FLAG(int64_t, batch, 1, "sequences of --max_context each engine group must hold at once");
ABSL_FLAG(int64_t, block_size, 64, "tokens per KV cache block");
ABSL_FLAG(int, tp, 0, "attention heads split this many ways (0: the planner's choice)");
ABSL_FLAG(int, dp_attention, 0, "attention replicas per group (0: the planner's choice)");
ABSL_FLAG(int, ep, 0, "routed experts split this many ways (0: the planner's choice)");
ABSL_FLAG(std::string, plan_measurements, "",
          "a //:scale_bench scale.json: among the plans that fit, the fastest measured on as many GPUs wins");

namespace mlaserve {
namespace {

struct Capacity {
  int64_t tokens_per_replica = 0;  // whole blocks
  int64_t sequences = 0;           // of max_context, in the whole group
};

Capacity CapacityOf(const ParallelPlan& plan, const RankBudget& budget, int64_t bytes_per_block, int64_t block_size,
                    int64_t max_context) {
  const int64_t blocks = budget.kv_bytes / bytes_per_block;
  const int64_t blocks_per_sequence = (max_context + block_size - 1) / block_size;
  return {blocks * block_size, plan.dp_attention * (blocks / blocks_per_sequence)};
}

absl::Status Run() {
  std::string path = ResolveUserPath(absl::GetFlag(FLAGS_model_config));
  if (path.empty()) return absl::InvalidArgumentError("--model_config is required");
  if (std::filesystem::is_directory(path)) path += "/config.json";
  ASSIGN_OR_RETURN(const ModelConfig config, LoadModelConfig(path));
  ASSIGN_OR_RETURN(const WeightFormat weights,
                   ChooseWeightFormat(config, absl::GetFlag(FLAGS_weights_dtype), /*gpu=*/true));
  const int gpus = absl::GetFlag(FLAGS_gpus);
  const int64_t memory = static_cast<int64_t>(absl::GetFlag(FLAGS_gpu_memory_gib) * (1ull << 30));
  const int64_t block_size = absl::GetFlag(FLAGS_block_size);
  const int64_t context = absl::GetFlag(FLAGS_max_context) > 0 ? absl::GetFlag(FLAGS_max_context)
                                                                : config.max_position_embeddings;
  ASSIGN_OR_RETURN(const KvCacheDtype kv_dtype, ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype)));
  const int64_t kv_per_token =
      config.num_hidden_layers * LatentRowBytes(config.kv_lora_rank, config.qk_rope_head_dim, /*bf16*/ 2, kv_dtype);
  const int64_t bytes_per_block = kv_per_token * block_size;
  PlanRequest request{.tp = absl::GetFlag(FLAGS_tp),
                      .dp_attention = absl::GetFlag(FLAGS_dp_attention),
                      .ep = absl::GetFlag(FLAGS_ep),
                      .weights = weights,
                      .memory_utilization = absl::GetFlag(FLAGS_gpu_memory_utilization),
                      .reserve_bytes = static_cast<int64_t>(absl::GetFlag(FLAGS_reserve_gib) * (1ull << 30)),
                      .kv_bytes_per_token = kv_per_token,
                      .kv_sequences = absl::GetFlag(FLAGS_batch),
                      .kv_context = context};
  if (!(request.memory_utilization > 0 && request.memory_utilization <= 1)) {
    return absl::InvalidArgumentError("--gpu_memory_utilization must be in (0, 1]");
  }
  if (const std::string path = absl::GetFlag(FLAGS_plan_measurements); !path.empty()) {
    ASSIGN_OR_RETURN(request.measured, ReadPlanMeasurements(path));
  }

  const ShardLayout whole = *MakeShardLayout(config, ParallelPlan{}, 0);
  std::printf("model: %s, %lld layers, %lld routed experts; weights %s: %s GiB in all\n", path.c_str(),
              static_cast<long long>(config.num_hidden_layers), static_cast<long long>(config.n_routed_experts),
              std::string(weights.name()).c_str(), GiB(ShardWeightBytes(config, whole, weights)).c_str());
  std::printf("GPUs: %d x %s GiB, %.2f usable = %s GiB each, %s GiB of it reserved for activations and buffers\n",
              gpus, GiB(memory).c_str(), request.memory_utilization,
              GiB(static_cast<int64_t>(memory * request.memory_utilization)).c_str(),
              GiB(request.reserve_bytes).c_str());
  std::printf("KV: %lld bytes per token (%lld layers x %lld latent x 2 bytes), blocks of %lld tokens\n",
              static_cast<long long>(kv_per_token), static_cast<long long>(config.num_hidden_layers),
              static_cast<long long>(config.latent_dim()), static_cast<long long>(block_size));
  std::printf("demand: %lld sequences of %lld tokens per engine group\n\n", static_cast<long long>(request.kv_sequences),
              static_cast<long long>(context));
  std::printf("%-38s %7s %12s %12s %15s %14s %s\n", "plan", "groups", "weights/GPU", "KV room/GPU", "tokens/replica",
              "seqs/group", "fits");
  ParallelPlan best_plan;
  Capacity best;
  RankBudget best_budget;
  for (const absl::StatusOr<ParallelPlan>& plan : CandidatePlans(config, gpus, request)) {
    if (!plan.ok()) continue;  // shapes that do not divide
    ASSIGN_OR_RETURN(const RankBudget budget, BudgetRank(config, *plan, memory, request));
    const Capacity capacity = CapacityOf(*plan, budget, bytes_per_block, block_size, context);
    const int64_t usable = static_cast<int64_t>(memory * request.memory_utilization);
    const char* fits = budget.weight_bytes + budget.reserve_bytes > usable ? "no: weights"
                       : budget.needed_bytes() > usable                   ? "no: KV"
                                                                          : "yes";
    std::printf("%-38s %7d %8s GiB %8s GiB %15lld %14lld %s\n", plan->ToString().c_str(), gpus / plan->group_size(),
                GiB(budget.weight_bytes).c_str(), GiB(budget.kv_bytes).c_str(),
                static_cast<long long>(capacity.tokens_per_replica), static_cast<long long>(capacity.sequences), fits);
    if (capacity.sequences > best.sequences) {
      best_plan = *plan;
      best = capacity;
      best_budget = budget;
    }
  }
  std::printf("\n");
  absl::StatusOr<ClusterPlan> chosen = PlanCluster(config, std::vector<int64_t>(gpus, memory), request);
  if (!chosen.ok()) {
    std::printf("no plan holds %lld sequences of %lld tokens per group (%s)\n",
                static_cast<long long>(request.kv_sequences), static_cast<long long>(context),
                std::string(chosen.status().message()).c_str());
    if (best.sequences == 0) {
      std::printf("no plan leaves room for one sequence of %lld tokens beside the weights\n",
                  static_cast<long long>(context));
      return absl::OkStatus();
    }
    chosen = ClusterPlan{best_plan, gpus / best_plan.group_size(), best_budget};
    std::printf("most sequences: ");
  } else {
    std::printf("chosen: ");
  }
  const Capacity capacity = CapacityOf(chosen->plan, chosen->rank, bytes_per_block, block_size, context);
  std::printf("%s\n", chosen->ToString().c_str());
  if (!chosen->why.empty()) std::printf("why: %s\n", chosen->why.c_str());
  std::printf("KV cache: %lld tokens per group (%d replica(s) x %lld), %lld in all; %lld sequences of %lld tokens "
              "per group, %lld in all\n",
              static_cast<long long>(capacity.tokens_per_replica * chosen->plan.dp_attention),
              chosen->plan.dp_attention, static_cast<long long>(capacity.tokens_per_replica),
              static_cast<long long>(capacity.tokens_per_replica * chosen->plan.dp_attention * chosen->num_groups),
              static_cast<long long>(capacity.sequences), static_cast<long long>(context),
              static_cast<long long>(capacity.sequences * chosen->num_groups));
  return absl::OkStatus();
}

}  // namespace
}  // namespace mlaserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::Status status = mlaserve::Run(); !status.ok()) {
    std::cerr << "plan: " << status << "\n";
    return 1;
  }
  return 0;
}
