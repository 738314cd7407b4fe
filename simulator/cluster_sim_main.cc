// The calibrated cluster model's command line.
//
// Check it against a scaling run (//:scale_bench's --out): every measured
// configuration is simulated with step costs fitted to its own step trace and
// the same workload, and the prediction is put beside the measurement:
//   bazel run //:cluster_sim -- --validate DIR
// Project clusters no machine here has, from a GPU's measured rates:
//   bazel run //:cluster_sim -- --project --config tests/testdata/configs/deepseek-v3-fp8.json \
//     --hardware h200 --nodes 2,4,8,16,32,64,128 --group_gpus 8,16 --out DIR
// Both write a CSV and gnuplot PNGs into --out and print a table; a projection
// also writes projection.json, rows the shard planner's --plan_measurements
// weighs like measured ones.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/model_config.h"
#include "common/status_macros.h"
#include "common/user_path.h"
#include "coordinator/cluster/weight_bytes.h"
#include "nlohmann/json.hpp"
#include "simulator/cluster_simulator.h"
#include "simulator/step_cost.h"
#include "tests/bench/stats.h"
#include "tests/bench/workload.h"

ABSL_FLAG(std::string, validate, "",
          "measured runs to predict: a //:scale_bench output directory (scale.json and step traces), or a JSON file "
          "of rows like scale.json's that name their GPU (docs/data/gpu_serving_points.json)");
ABSL_FLAG(bool, project, false, "project clusters of --nodes nodes of --hardware GPUs serving --config");
ABSL_FLAG(int64_t, long_prompt, 0,
          "project the time to first token of one prompt of this many tokens on one group of each of "
          "--group_gpus GPUs of --hardware (attention replicas, experts split over them), context parallelism "
          "off and on (--context_parallel_min_tokens)");
ABSL_FLAG(std::string, out, "cluster_sim", "directory for the CSV and charts");
ABSL_FLAG(int64_t, max_num_seqs, 64, "the coordinator's --max_num_seqs in the runs validated or projected");
ABSL_FLAG(int64_t, max_batched_tokens, 512, "the coordinator's --max_batched_tokens");
ABSL_FLAG(int64_t, context_parallel_min_tokens, 4096, "the coordinator's --context_parallel_min_tokens");
ABSL_FLAG(double, kv_gbps, 1.0, "--validate: GB/s of KV moved between groups (CPU workers: TCP)");
// Projection.
ABSL_FLAG(std::string, config, "tests/testdata/configs/deepseek-v3-fp8.json", "model config.json");
ABSL_FLAG(std::string, hardware, "h200", "GPU whose measured rates cost the steps: h200 or h100");
ABSL_FLAG(std::string, weights_dtype, "auto", "auto (as stored), bf16 or fp8");
ABSL_FLAG(std::string, kv_cache_dtype, "auto", "auto or bf16, fp8 (rows of kernels/latent_row.h)");
ABSL_FLAG(std::string, nodes, "2,4,8,16,32,64,128", "cluster sizes in nodes");
ABSL_FLAG(std::string, group_gpus, "8,16",
          "GPUs per engine group (attention data-parallel and experts split over all of them), one line each");
ABSL_FLAG(double, prefill_share, 0.25,
          "share of the groups that only prefill (disaggregation); 0 for mixed groups");
ABSL_FLAG(double, gpu_memory_utilization, 0.9, "share of each GPU's memory for weights, activations and KV");
ABSL_FLAG(double, activation_reserve_gb, 6, "GB per GPU kept for activations and graphs");
ABSL_FLAG(int64_t, block_size, 64, "tokens per KV block");
ABSL_FLAG(std::string, workload, "shared_prefix", "random | shared_prefix | multi_turn");
ABSL_FLAG(int64_t, input_len, 2048, "prompt tokens (new ones per request)");
ABSL_FLAG(int64_t, output_len, 256, "output tokens per request");
ABSL_FLAG(int64_t, prefix_len, 1024, "shared_prefix: tokens of each shared prefix");
ABSL_FLAG(int64_t, num_prefixes, 64, "shared_prefix: distinct shared prefixes");
ABSL_FLAG(int64_t, concurrency_per_gpu, 32, "sessions in flight per GPU (closed loop)");
ABSL_FLAG(int64_t, requests_per_gpu, 64, "sessions per GPU");

namespace mlaserve::sim {
namespace {

absl::StatusOr<std::vector<int64_t>> ParseList(const std::string& flag, const std::string& text) {
  std::vector<int64_t> values;
  for (absl::string_view v : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t n;
    if (!absl::SimpleAtoi(v, &n) || n < 1) return absl::InvalidArgumentError(absl::StrCat(flag, ": '", v, "'"));
    values.push_back(n);
  }
  if (values.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, " is empty"));
  return values;
}

double RelativeError(double predicted, double measured) {
  return measured != 0 ? (predicted - measured) / measured : 0.0;
}

// The workload a scale.json row ran, regenerated from its options.
absl::StatusOr<std::vector<bench::Session>> WorkloadOf(const nlohmann::json& w) {
  ASSIGN_OR_RETURN(const bench::WorkloadKind kind, bench::ParseWorkloadKind(w.at("kind").get<std::string>()));
  return bench::GenerateWorkload({.kind = kind,
                                  .num_requests = w.at("num_requests").get<int64_t>(),
                                  .input_len = w.at("input_len").get<int64_t>(),
                                  .output_len = w.at("output_len").get<int64_t>(),
                                  .prefix_len = w.at("prefix_len").get<int64_t>(),
                                  .num_turns = w.at("num_turns").get<int64_t>(),
                                  .num_conversations = w.at("num_conversations").get<int64_t>(),
                                  .vocab_low = w.at("vocab_low").get<int32_t>(),
                                  .vocab_high = w.at("vocab_high").get<int32_t>(),
                                  .seed = w.at("seed").get<uint64_t>()});
}

// A row's cluster with `cost` for every group; the row's scheduler limits
// where it names them, else the flags'.
ClusterSpec ClusterOf(const nlohmann::json& row, std::shared_ptr<const StepCost> cost) {
  const int groups = row.at("groups").get<int>();
  ClusterSpec cluster{.kv_bytes_per_s = absl::GetFlag(FLAGS_kv_gbps) * 1e9, .kv_bytes_per_block = 1};
  for (int g = 0; g < groups; ++g) {
    cluster.groups.push_back(
        {.workers = row.at("workers").get<int>() / groups,
         .dp_attention = std::max(1, row.at("dp_attention").get<int>()),
         .num_blocks = row.at("kv_blocks").get<int64_t>(),
         .block_size = row.at("block_size").get<int64_t>(),
         .scheduler = {.max_num_seqs = row.value("max_num_seqs", absl::GetFlag(FLAGS_max_num_seqs)),
                       .max_batched_tokens = row.value("max_batched_tokens", absl::GetFlag(FLAGS_max_batched_tokens)),
                       .context_parallel_min_tokens = absl::GetFlag(FLAGS_context_parallel_min_tokens)},
         .cost = cost});
  }
  return cluster;
}

// The simulated summary of `row` with `cost`.
absl::StatusOr<bench::BenchmarkSummary> Predict(const nlohmann::json& row, std::shared_ptr<const StepCost> cost) {
  ASSIGN_OR_RETURN(std::vector<bench::Session> sessions, WorkloadOf(row.at("workload")));
  const LoadSpec load{.sessions = std::move(sessions), .concurrency = row.at("concurrency").get<int64_t>()};
  ASSIGN_OR_RETURN(const SimulationResult simulated, Simulate(ClusterOf(row, std::move(cost)), load));
  return simulated.Summary();
}

// Step costs of measured rows: fitted to a row's step trace (scale_bench's
// rows), or the roofline of the GPU a row names ("hardware", "config",
// "weights_dtype": GPU runs recorded by hand from docs/perf.md).
class RowCosts {
 public:
  explicit RowCosts(std::string dir) : dir_(std::move(dir)) {}

  absl::StatusOr<std::shared_ptr<const StepCost>> Of(const nlohmann::json& row) {
    if (row.contains("step_trace")) return Fitted(row.at("step_trace").get<std::string>());
    ASSIGN_OR_RETURN(const ModelConfig config, LoadModelConfig(ResolveUserPath(row.at("config").get<std::string>())));
    ASSIGN_OR_RETURN(const Hardware hw, MeasuredHardware(row.at("hardware").get<std::string>()));
    ASSIGN_OR_RETURN(const WeightFormat format,
                     ChooseWeightFormat(config, row.value("weights_dtype", std::string("auto")), /*gpu=*/true));
    const ParallelPlan plan{.tp = row.at("tp").get<int>(),
                            .dp_attention = row.at("dp_attention").get<int>(),
                            .ep = row.at("ep").get<int>()};
    ASSIGN_OR_RETURN(RooflineStepCost cost, RooflineStepCost::Create(config, plan, format, hw));
    return std::make_shared<RooflineStepCost>(cost);
  }

  // The cost fitted to `trace`, a file in the run's directory.
  absl::StatusOr<std::shared_ptr<const StepCost>> Fitted(const std::string& trace) {
    if (auto it = fitted_.find(trace); it != fitted_.end()) return it->second;
    ASSIGN_OR_RETURN(const std::vector<StepSample> samples, ReadStepTrace(dir_ + "/" + trace));
    ASSIGN_OR_RETURN(FittedStepCost fitted, FittedStepCost::Fit(samples));
    std::cerr << "cluster_sim: " << trace << ": " << samples.size() << " steps: " << fitted.ToString() << "\n";
    return fitted_[trace] = std::make_shared<FittedStepCost>(fitted);
  }

 private:
  const std::string dir_;
  std::map<std::string, std::shared_ptr<const StepCost>> fitted_;
};

// `path`: a scale_bench output directory (its scale.json) or a JSON file of
// rows like scale.json's.
absl::Status Validate(const std::string& path, const std::string& out) {
  const bool is_dir = std::filesystem::is_directory(path);
  const std::string file = is_dir ? path + "/scale.json" : path;
  std::ifstream in(file);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", file));
  const nlohmann::json rows = nlohmann::json::parse(in, nullptr, false);
  if (!rows.is_array()) return absl::InvalidArgumentError(absl::StrCat(file, " is not a JSON array"));
  RowCosts costs(is_dir ? path : std::filesystem::path(path).parent_path().string());
  std::map<std::string, std::string> smallest_of_shape;  // group shape -> the first trace of it
  std::ofstream csv(out + "/validation.csv");
  csv << "workers,plan,concurrency,groups,measured_output_tok_s,predicted_output_tok_s,output_error,"
         "measured_ttft_p50_ms,predicted_ttft_p50_ms,ttft_error,measured_tpot_p50_ms,predicted_tpot_p50_ms,"
         "tpot_error,measured_hit_rate,predicted_hit_rate,costed_by,predicted_from_smallest_output_tok_s,"
         "from_smallest_error\n";
  std::cout << "| workers | plan | in flight | output tok/s measured | predicted | error | TTFT p50 ms measured | "
               "predicted | error | TPOT p50 ms measured | predicted | error | costed by | output tok/s from the "
               "smallest cluster's steps |\n"
               "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |\n";
  double worst = 0;
  int validated = 0;
  for (const nlohmann::json& row : rows) {
    if (!row.value("error", std::string()).empty()) continue;
    ASSIGN_OR_RETURN(const std::shared_ptr<const StepCost> cost, costs.Of(row));
    ASSIGN_OR_RETURN(const bench::BenchmarkSummary p, Predict(row, cost));
    const int groups = row.at("groups").get<int>();
    const int workers = row.at("workers").get<int>();
    const int64_t concurrency = row.at("concurrency").get<int64_t>();
    const std::string costed_by = row.contains("step_trace") ? row.at("step_trace").get<std::string>()
                                                             : row.at("hardware").get<std::string>() + " roofline";
    // A traced row again with the steps of the smallest cluster that ran its
    // group shape: a prediction of this cluster from a smaller one's steps.
    std::string scaled = "-";
    double e_scaled = 0, from_smallest = 0;
    if (row.contains("step_trace")) {
      const std::string shape = absl::StrCat(workers / groups, "/", row.at("dp_attention").get<int>(), "/",
                                             row.at("ep").get<int>());
      const std::string& smallest = smallest_of_shape.emplace(shape, costed_by).first->second;
      ASSIGN_OR_RETURN(const std::shared_ptr<const StepCost> smaller, costs.Fitted(smallest));
      ASSIGN_OR_RETURN(const bench::BenchmarkSummary s, Predict(row, smaller));
      from_smallest = s.output_throughput;
      e_scaled = RelativeError(from_smallest, row.at("output_throughput").get<double>());
      scaled = absl::StrFormat("%s: %.1f (%+.1f%%)", smallest, from_smallest, 100 * e_scaled);
    }
    const double m_out = row.at("output_throughput").get<double>();
    const double m_ttft = row.at("ttft_ms").at("p50").get<double>();
    const double m_tpot = row.at("tpot_ms").at("p50").get<double>();
    const double e_out = RelativeError(p.output_throughput, m_out), e_ttft = RelativeError(p.ttft_ms.p50, m_ttft),
                 e_tpot = RelativeError(p.tpot_ms.p50, m_tpot);
    worst = std::max(worst, std::abs(e_out));
    ++validated;
    csv << absl::StrCat(workers, ",", row.at("plan").get<std::string>(), ",", concurrency, ",", groups, ",", m_out,
                        ",", p.output_throughput, ",", e_out, ",", m_ttft, ",", p.ttft_ms.p50, ",", e_ttft, ",",
                        m_tpot, ",", p.tpot_ms.p50, ",", e_tpot, ",", row.value("prefix_cache_hit_rate", 0.0), ",",
                        p.prefix_cache_hit_rate, ",", costed_by, ",", from_smallest, ",", e_scaled)
        << "\n";
    std::cout << absl::StrFormat(
        "| %d | %s | %d | %.1f | %.1f | %+.1f%% | %.0f | %.0f | %+.1f%% | %.1f | %.1f | %+.1f%% | %s | %s |\n", workers,
        row.at("plan").get<std::string>(), concurrency, m_out, p.output_throughput, 100 * e_out, m_ttft, p.ttft_ms.p50,
        100 * e_ttft, m_tpot, p.tpot_ms.p50, 100 * e_tpot, costed_by, scaled);
  }
  csv.close();
  if (validated == 0) return absl::InvalidArgumentError(absl::StrCat(file, " has no measured row"));
  std::cout << absl::StrFormat("cluster_sim: %d configurations; largest output-throughput error %.1f%%\n", validated,
                               100 * worst);
  return bench::RunGnuplot(
      absl::StrCat("set terminal pngcairo size 700,600\nset output '", out,
                   "/validation.png'\nset datafile separator ','\nset key top left\nset grid\n"
                   "set logscale xy\nset xlabel 'measured output tokens/s'\nset ylabel 'predicted output tokens/s'\n"
                   "plot '",
                   out, "/validation.csv' every ::1 using 5:6 with points pt 7 title 'configurations', x with lines "
                        "dt 2 title 'exact', 1.15*x with lines dt 3 title '+15%', 0.85*x with lines dt 3 title '-15%'\n"),
      out + "/validation.gp");
}

// KV blocks a GPU holds beside the weights of `roofline`'s rank and the
// activation reserve.
int64_t KvBlocksPerGpu(const Hardware& hw, const RooflineStepCost& roofline, int64_t block_size) {
  const double kv_room = hw.memory_bytes * absl::GetFlag(FLAGS_gpu_memory_utilization) -
                         roofline.rank_weight_bytes() - absl::GetFlag(FLAGS_activation_reserve_gb) * 1e9;
  return static_cast<int64_t>(kv_room / (roofline.kv_bytes_per_token() * block_size));
}

// The coordinator's scheduler limits for projections, splitting prompts of
// `context_parallel_min_tokens` (0: none).
SchedulerOptions ProjectedScheduler(int64_t context_parallel_min_tokens) {
  return {.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs),
          .max_batched_tokens = absl::GetFlag(FLAGS_max_batched_tokens),
          .context_parallel_min_tokens = context_parallel_min_tokens};
}

// Clusters of `nodes` nodes, one line per group size.
absl::Status Project(const std::string& out) {
  ASSIGN_OR_RETURN(const ModelConfig config, LoadModelConfig(ResolveUserPath(absl::GetFlag(FLAGS_config))));
  ASSIGN_OR_RETURN(const Hardware hw, MeasuredHardware(absl::GetFlag(FLAGS_hardware)));
  ASSIGN_OR_RETURN(const WeightFormat format, ChooseWeightFormat(config, absl::GetFlag(FLAGS_weights_dtype), true));
  ASSIGN_OR_RETURN(const KvCacheDtype kv_dtype, ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype)));
  ASSIGN_OR_RETURN(const std::vector<int64_t> node_counts, ParseList("--nodes", absl::GetFlag(FLAGS_nodes)));
  ASSIGN_OR_RETURN(const std::vector<int64_t> group_sizes, ParseList("--group_gpus", absl::GetFlag(FLAGS_group_gpus)));
  ASSIGN_OR_RETURN(const bench::WorkloadKind kind, bench::ParseWorkloadKind(absl::GetFlag(FLAGS_workload)));
  const int64_t block_size = absl::GetFlag(FLAGS_block_size);
  std::ofstream csv(out + "/projection.csv");
  // The same figures as scale.json rows: the shard planner's
  // --plan_measurements takes them, so it picks among plans by prediction
  // where none was measured.
  nlohmann::json predicted = nlohmann::json::array();
  csv << "nodes,group_gpus,gpus,groups,prefill_groups,kv_tokens_per_gpu,output_tok_s,output_tok_s_per_node,"
         "input_tok_s_per_node,output_tok_s_per_gpu,ttft_p50_ms,ttft_p99_ms,tpot_p50_ms,tpot_p99_ms,hit_rate,"
         "handoffs,steps\n";
  std::cout << "| nodes | GPUs per group | groups (prefill) | KV tokens per GPU | output tok/s per node | input tok/s "
               "per node | TTFT p50 / p99 ms | TPOT p50 / p99 ms | prefix hits |\n"
               "| ---: | ---: | --- | ---: | ---: | ---: | --- | --- | ---: |\n";
  for (int64_t group_gpus : group_sizes) {
    const ParallelPlan plan{.tp = 1, .dp_attention = static_cast<int>(group_gpus), .ep = static_cast<int>(group_gpus)};
    ASSIGN_OR_RETURN(RooflineStepCost roofline, RooflineStepCost::Create(config, plan, format, hw, kv_dtype));
    std::cerr << "cluster_sim: " << roofline.ToString() << "\n";
    const int64_t kv_blocks = KvBlocksPerGpu(hw, roofline, block_size);
    auto cost = std::make_shared<RooflineStepCost>(roofline);
    for (int64_t nodes : node_counts) {
      const int64_t gpus = nodes * hw.gpus_per_node;
      if (gpus % group_gpus != 0 || kv_blocks <= 0) {
        std::cout << absl::StrFormat("| %d | %d | %s | | | | | | |\n", nodes, group_gpus,
                                     kv_blocks <= 0 ? "weights do not fit" : "groups do not divide the GPUs");
        continue;
      }
      const int64_t groups = gpus / group_gpus;
      const int64_t prefill =
          groups > 1 ? std::clamp<int64_t>(std::llround(groups * absl::GetFlag(FLAGS_prefill_share)),
                                           absl::GetFlag(FLAGS_prefill_share) > 0 ? 1 : 0, groups - 1)
                     : 0;
      ClusterSpec cluster{.kv_bytes_per_s = hw.inter_node_bytes_per_s,
                          .kv_latency_s = 1e-3,
                          .kv_bytes_per_block = static_cast<int64_t>(roofline.kv_bytes_per_token()) * block_size};
      for (int64_t g = 0; g < groups; ++g) {
        cluster.groups.push_back({.role = g < prefill ? GroupRole::kPrefill
                                          : prefill > 0 ? GroupRole::kDecode
                                                        : GroupRole::kMixed,
                                  .workers = static_cast<int>(group_gpus),
                                  .dp_attention = static_cast<int>(group_gpus),
                                  .num_blocks = kv_blocks,
                                  .block_size = block_size,
                                  .scheduler = ProjectedScheduler(absl::GetFlag(FLAGS_context_parallel_min_tokens)),
                                  .cost = cost});
      }
      ASSIGN_OR_RETURN(std::vector<bench::Session> sessions,
                       bench::GenerateWorkload({.kind = kind,
                                                .num_requests = absl::GetFlag(FLAGS_requests_per_gpu) * gpus,
                                                .input_len = absl::GetFlag(FLAGS_input_len),
                                                .output_len = absl::GetFlag(FLAGS_output_len),
                                                .prefix_len = absl::GetFlag(FLAGS_prefix_len),
                                                .num_prefixes = absl::GetFlag(FLAGS_num_prefixes),
                                                .num_turns = 4,
                                                .num_conversations = absl::GetFlag(FLAGS_requests_per_gpu) * gpus,
                                                .vocab_low = 10,
                                                .vocab_high = static_cast<int32_t>(config.vocab_size),
                                                .seed = static_cast<uint64_t>(nodes)}));
      std::cerr << "cluster_sim: " << nodes << " node(s), " << groups << " group(s) of " << group_gpus << " GPUs\n";
      const LoadSpec load{.sessions = std::move(sessions), .concurrency = absl::GetFlag(FLAGS_concurrency_per_gpu) * gpus};
      ASSIGN_OR_RETURN(const SimulationResult simulated, Simulate(cluster, load));
      const bench::BenchmarkSummary s = simulated.Summary();
      const double per_node = s.output_throughput / nodes;
      csv << absl::StrCat(nodes, ",", group_gpus, ",", gpus, ",", groups, ",", prefill, ",",
                          kv_blocks * block_size, ",", s.output_throughput, ",", per_node, ",",
                          s.input_throughput / nodes, ",", s.output_throughput / gpus, ",", s.ttft_ms.p50, ",",
                          s.ttft_ms.p99, ",", s.tpot_ms.p50, ",", s.tpot_ms.p99, ",", s.prefix_cache_hit_rate, ",",
                          simulated.handoffs, ",", simulated.steps)
          << "\n";
      predicted.push_back({{"workers", gpus},
                           {"plan", absl::StrCat("predicted, ", group_gpus, " GPUs per group")},
                           {"tp", plan.tp},
                           {"dp_attention", plan.dp_attention},
                           {"ep", plan.ep},
                           {"groups", groups},
                           {"prefill_groups", prefill},
                           {"output_throughput", s.output_throughput},
                           {"input_throughput", s.input_throughput},
                           {"ttft_ms", {{"p50", s.ttft_ms.p50}, {"p99", s.ttft_ms.p99}}},
                           {"tpot_ms", {{"p50", s.tpot_ms.p50}, {"p99", s.tpot_ms.p99}}},
                           {"predicted_by", absl::StrCat("cluster_sim, ", cost->ToString())}});
      std::cout << absl::StrFormat("| %d | %d | %d (%d) | %d | %.0f | %.0f | %.0f / %.0f | %.1f / %.1f | %.0f%% |\n",
                                   nodes, group_gpus, groups, prefill, kv_blocks * block_size, per_node,
                                   s.input_throughput / nodes, s.ttft_ms.p50, s.ttft_ms.p99, s.tpot_ms.p50,
                                   s.tpot_ms.p99, 100 * s.prefix_cache_hit_rate);
    }
  }
  csv.close();
  std::ofstream(out + "/projection.json") << predicted.dump(1) << "\n";
  std::vector<std::string> per_node, tpot;
  for (int64_t group_gpus : group_sizes) {
    const std::string rows = absl::StrCat("'< grep \"^[0-9]*,", group_gpus, ",\" ", out, "/projection.csv' using 1:");
    per_node.push_back(absl::StrCat(rows, "8 with linespoints title '", group_gpus, " GPUs per group'"));
    tpot.push_back(absl::StrCat(rows, "13 with linespoints title '", group_gpus, " GPUs per group'"));
  }
  const std::string head = absl::StrCat("set terminal pngcairo size 800,500\nset datafile separator ','\nset grid\n"
                                        "set key top right\nset logscale x 2\nset xlabel 'nodes of 8 ",
                                        hw.name, "'\n");
  RETURN_IF_ERROR(bench::RunGnuplot(absl::StrCat(head, "set output '", out, "/projection_per_node.png'\nset ylabel "
                                                 "'output tokens/s per node'\nset yrange [0:*]\nplot ",
                                                 absl::StrJoin(per_node, ", "), "\n"),
                                    out + "/projection_per_node.gp"));
  return bench::RunGnuplot(absl::StrCat(head, "set output '", out, "/projection_tpot.png'\nset ylabel "
                                        "'TPOT p50 (ms)'\nset yrange [0:*]\nplot ",
                                        absl::StrJoin(tpot, ", "), "\n"),
                           out + "/projection_tpot.gp");
}

// One prompt of --long_prompt tokens on one group of each size, context
// parallelism off and on.
absl::Status ProjectLongPrompt(const std::string& out) {
  ASSIGN_OR_RETURN(const ModelConfig config, LoadModelConfig(ResolveUserPath(absl::GetFlag(FLAGS_config))));
  ASSIGN_OR_RETURN(const Hardware hw, MeasuredHardware(absl::GetFlag(FLAGS_hardware)));
  ASSIGN_OR_RETURN(const WeightFormat format, ChooseWeightFormat(config, absl::GetFlag(FLAGS_weights_dtype), true));
  ASSIGN_OR_RETURN(const KvCacheDtype kv_dtype, ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype)));
  ASSIGN_OR_RETURN(const std::vector<int64_t> group_sizes, ParseList("--group_gpus", absl::GetFlag(FLAGS_group_gpus)));
  const int64_t prompt = absl::GetFlag(FLAGS_long_prompt), block_size = absl::GetFlag(FLAGS_block_size);
  const int64_t min_tokens = absl::GetFlag(FLAGS_context_parallel_min_tokens);
  ASSIGN_OR_RETURN(std::vector<bench::Session> sessions,
                   bench::GenerateWorkload({.kind = bench::WorkloadKind::kRandom,
                                            .num_requests = 1,
                                            .input_len = prompt,
                                            .output_len = 1,
                                            .vocab_low = 10,
                                            .vocab_high = static_cast<int32_t>(config.vocab_size),
                                            .seed = 1}));
  std::ofstream csv(out + "/long_prompt.csv");
  csv << "group_gpus,prompt_tokens,ttft_s_alone,ttft_s_context_parallel,speedup\n";
  std::cout << "| GPUs in the group | TTFT, home replica alone (s) | TTFT, context parallel (s) | speedup |\n"
               "| ---: | ---: | ---: | ---: |\n";
  for (int64_t group_gpus : group_sizes) {
    const ParallelPlan plan{.tp = 1, .dp_attention = static_cast<int>(group_gpus), .ep = static_cast<int>(group_gpus)};
    ASSIGN_OR_RETURN(RooflineStepCost roofline, RooflineStepCost::Create(config, plan, format, hw, kv_dtype));
    const int64_t kv_blocks = KvBlocksPerGpu(hw, roofline, block_size);
    if (kv_blocks * block_size < prompt + 1) {
      std::cout << absl::StrFormat("| %d | the prompt does not fit | | |\n", group_gpus);
      continue;
    }
    auto cost = std::make_shared<RooflineStepCost>(roofline);
    double ttft[2];
    for (int split = 0; split < 2; ++split) {
      ClusterSpec cluster{.kv_bytes_per_s = hw.inter_node_bytes_per_s,
                          .kv_bytes_per_block = static_cast<int64_t>(roofline.kv_bytes_per_token()) * block_size};
      cluster.groups.push_back({.workers = static_cast<int>(group_gpus),
                                .dp_attention = static_cast<int>(group_gpus),
                                .num_blocks = kv_blocks,
                                .block_size = block_size,
                                .scheduler = ProjectedScheduler(split ? min_tokens : 0),
                                .cost = cost});
      ASSIGN_OR_RETURN(const SimulationResult simulated, Simulate(cluster, {.sessions = sessions, .concurrency = 1}));
      ttft[split] = simulated.Summary().ttft_ms.p50 / 1e3;
    }
    csv << absl::StrCat(group_gpus, ",", prompt, ",", ttft[0], ",", ttft[1], ",", ttft[0] / ttft[1]) << "\n";
    std::cout << absl::StrFormat("| %d | %.2f | %.2f | %.2fx |\n", group_gpus, ttft[0], ttft[1], ttft[0] / ttft[1]);
  }
  csv.close();
  return bench::RunGnuplot(
      absl::StrCat("set terminal pngcairo size 700,450\nset output '", out, "/long_prompt.png'\n",
                   "set datafile separator ','\nset grid\nset key bottom left\nset logscale x 2\nset yrange [0:*]\n",
                   "set xlabel 'GPUs in the group (", hw.name, ")'\nset ylabel 'TTFT (s)'\n",
                   "set title 'one ", prompt, "-token prompt'\nplot '", out,
                   "/long_prompt.csv' every ::1 using 1:3 with linespoints title 'home replica alone', '", out,
                   "/long_prompt.csv' every ::1 using 1:4 with linespoints title 'context parallel'\n"),
      out + "/long_prompt.gp");
}

absl::Status Run() {
  const std::string out = ResolveUserPath(absl::GetFlag(FLAGS_out));
  std::filesystem::create_directories(out);
  if (!absl::GetFlag(FLAGS_validate).empty()) {
    RETURN_IF_ERROR(Validate(ResolveUserPath(absl::GetFlag(FLAGS_validate)), out));
  }
  if (absl::GetFlag(FLAGS_project)) RETURN_IF_ERROR(Project(out));
  if (absl::GetFlag(FLAGS_long_prompt) > 0) RETURN_IF_ERROR(ProjectLongPrompt(out));
  if (absl::GetFlag(FLAGS_validate).empty() && !absl::GetFlag(FLAGS_project) && absl::GetFlag(FLAGS_long_prompt) <= 0) {
    return absl::InvalidArgumentError("nothing to do: give --validate DIR, --project or --long_prompt N");
  }
  std::cerr << "cluster_sim: wrote " << out << "\n";
  return absl::OkStatus();
}

}  // namespace
}  // namespace mlaserve::sim

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = mlaserve::sim::Run();
  if (!status.ok()) {
    std::cerr << "cluster_sim: " << status << "\n";
    return 1;
  }
  return 0;
}
