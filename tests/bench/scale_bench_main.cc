// The cluster scaling benchmark: for each worker count and each parallel plan
// starts a local cluster (//:serve), waits until every planned engine group
// serves, drives one closed-loop workload scaled with the cluster (requests
// and concurrency per worker) through the OpenAI API, reads the cluster's KV
// migration figures, and stops it. Writes scale.csv and scale.json and draws
// throughput, per-worker efficiency and latency against cluster size, one
// line per plan. Its scale.json is what the coordinator's
// --plan_measurements weighs when it plans.
//   bazel run //:scale_bench -- --model DIR --workers 1,2,4 --plans dp,ep --out DIR
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "common/user_path.h"
#include "nlohmann/json.hpp"
#include "tests/bench/load_driver.h"
#include "tests/bench/stats.h"
#include "tests/bench/workload.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(std::string, workers, "1,2,4", "cluster sizes: worker processes, comma-separated");
ABSL_FLAG(std::string, plans, "dp,ep",
          "parallel plans, comma-separated: dp (a group per worker), ep (one group: attention data-parallel, "
          "experts split over all), tp (one group: heads and experts split over all), auto (the planner's)");
ABSL_FLAG(std::string, out, "scale", "directory for scale.csv, scale.json and the charts");
ABSL_FLAG(std::string, worker_flags, "", "space-separated flags for every worker (e.g. \"--device=cuda\")");
ABSL_FLAG(std::string, worker_devices, "", "comma-separated --device of the workers, in turn");
ABSL_FLAG(std::string, coordinator_flags, "", "space-separated flags for the coordinator");
ABSL_FLAG(std::string, workload, "random", "random | shared_prefix | multi_turn");
ABSL_FLAG(int64_t, requests_per_worker, 16, "requests (sessions) per worker");
ABSL_FLAG(int64_t, waves, 0,
          "when positive, each load level sends this many times its concurrency in requests (sessions) instead of "
          "--requests_per_worker, so a light level is as short as a heavy one");
ABSL_FLAG(std::string, serve, "deploy/serve", "the //:serve launcher (.bundle/bin/serve on a GPU machine)");
ABSL_FLAG(std::string, concurrency_per_worker, "8",
          "sessions in flight per worker (closed loop); several, comma-separated, are load levels run in turn on "
          "each cluster");
ABSL_FLAG(int64_t, input_len, 128, "prompt tokens");
ABSL_FLAG(int64_t, output_len, 32, "output tokens per request");
ABSL_FLAG(int64_t, prefix_len, 256, "shared_prefix: tokens of the shared prefix");
ABSL_FLAG(uint64_t, seed, 0, "seed of the prompts");
ABSL_FLAG(int, base_port, 18600, "first of the three ports each cluster takes in turn");
ABSL_FLAG(double, start_timeout_s, 300, "how long a cluster may take to serve");

namespace mlaserve::bench {
namespace {

struct ParallelDegrees {
  int tp = 0, dp_attention = 0, ep = 0;
  int64_t kv_blocks = 0, block_size = 0;  // per attention replica
};

struct Plan {
  std::string name;
  int tp = 0, dp_attention = 0, ep = 0;
};

absl::StatusOr<Plan> PlanFor(const std::string& name, int workers) {
  if (name == "dp") return Plan{name, 1, 1, 1};
  if (name == "ep") return Plan{name, 1, workers, workers};
  if (name == "tp") return Plan{name, workers, 1, workers};
  if (name == "auto") return Plan{name, 0, 0, 0};
  return absl::InvalidArgumentError(absl::StrCat("unknown plan '", name, "' (dp, ep, tp, auto)"));
}

// One cluster of //:serve, stopped (SIGTERM, then waited for) when it goes.
class Cluster {
 public:
  Cluster(int workers, const Plan& plan, int port) : port_(port) {
    std::vector<std::string> args = {absl::GetFlag(FLAGS_serve),
                                     "--model=" + absl::GetFlag(FLAGS_model),
                                     absl::StrCat("--workers=", workers),
                                     absl::StrCat("--http_port=", port),
                                     absl::StrCat("--grpc_port=", port + 1),
                                     absl::StrCat("--internal_port=", port + 2),
                                     absl::StrCat("--tp=", plan.tp),
                                     absl::StrCat("--dp_attention=", plan.dp_attention),
                                     absl::StrCat("--ep=", plan.ep),
                                     "--worker_flags=" + absl::GetFlag(FLAGS_worker_flags),
                                     "--worker_devices=" + absl::GetFlag(FLAGS_worker_devices),
                                     "--"};
    for (absl::string_view flag : absl::StrSplit(absl::GetFlag(FLAGS_coordinator_flags), ' ', absl::SkipEmpty())) {
      args.emplace_back(flag);
    }
    // Every step's shape and time: what //:cluster_sim fits its costs to.
    step_trace_ = absl::StrCat("steps_", workers, "_", plan.name, ".csv");
    args.push_back(absl::StrCat("--step_trace=", absl::GetFlag(FLAGS_out), "/", step_trace_));
    log_ = absl::StrCat(absl::GetFlag(FLAGS_out), "/cluster_", workers, "_", plan.name, ".log");
    pid_ = fork();
    if (pid_ == 0) {
      std::freopen(log_.c_str(), "w", stderr);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~Cluster() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }

  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }
  const std::string& log() const { return log_; }
  // The step trace's file name, in --out.
  const std::string& step_trace() const { return step_trace_; }

  // Waits until every planned group serves; the groups it serves.
  absl::StatusOr<int> AwaitServing(absl::Duration timeout) {
    httplib::Client client("127.0.0.1", port_);
    client.set_connection_timeout(1, 0);
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return absl::UnavailableError(absl::StrCat("the cluster exited; see ", log_));
      }
      if (auto health = client.Get("/health"); health && health->status == 200) {
        const nlohmann::json body = nlohmann::json::parse(health->body, nullptr, false);
        if (body.is_object() && body.value("status", "") == "ok") return body.value("serving_groups", 0);
      }
      absl::SleepFor(absl::Milliseconds(200));
    }
    return absl::DeadlineExceededError(
        absl::StrCat("the cluster did not serve within ", absl::FormatDuration(timeout), "; see ", log_));
  }

  // The plan the coordinator chose and the KV pool it gave the first group,
  // from its log ("shard plan: N group(s) of tp=.. dp_attention=.. ep=..",
  // "group G: KV cache of B blocks = T tokens per attention replica"); zeros
  // when not found.
  ParallelDegrees PlanUsed() const {
    std::ifstream in(log_);
    ParallelDegrees used;
    for (std::string line; std::getline(in, line);) {
      if (const size_t at = line.find("shard plan: "); at != std::string::npos) {
        std::sscanf(line.c_str() + line.find(" of tp=", at), " of tp=%d dp_attention=%d ep=%d", &used.tp,
                    &used.dp_attention, &used.ep);
      }
      if (const size_t at = line.find("KV cache of "); at != std::string::npos && used.kv_blocks == 0) {
        long long blocks = 0, tokens = 0;
        if (std::sscanf(line.c_str() + at, "KV cache of %lld blocks = %lld tokens", &blocks, &tokens) == 2 &&
            blocks > 0) {
          used.kv_blocks = blocks;
          used.block_size = tokens / blocks;
        }
      }
    }
    return used;
  }

  // A counter of /metrics summed over its label sets; 0 when absent.
  double Metric(const std::string& name) const {
    httplib::Client client("127.0.0.1", port_);
    auto metrics = client.Get("/metrics");
    double sum = 0;
    if (!metrics) return sum;
    for (absl::string_view line : absl::StrSplit(metrics->body, '\n')) {
      if (!absl::StartsWith(line, name) ||
          (line.size() > name.size() && line[name.size()] != ' ' && line[name.size()] != '{')) {
        continue;
      }
      double value;
      if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &value)) sum += value;
    }
    return sum;
  }

 private:
  const int port_;
  std::string log_;
  std::string step_trace_;
  pid_t pid_ = -1;
};

struct Row {
  int workers = 0;
  std::string plan;
  int64_t concurrency = 0;
  int groups = 0;
  ParallelDegrees plan_used;  // as the coordinator chose it
  std::string error;          // empty when it ran
  BenchmarkSummary summary;
  double migrated_tokens = 0;
  double transfer_bytes = 0;
  WorkloadOptions workload;  // the level's, regenerable
  std::string step_trace;    // file name in --out
};

// A row per load level, or one saying why the cluster did not serve.
absl::StatusOr<std::vector<Row>> Measure(int workers, const Plan& plan, const std::vector<int64_t>& levels, int port) {
  Row started{.workers = workers, .plan = plan.name};
  Cluster cluster(workers, plan, port);
  absl::StatusOr<int> groups = cluster.AwaitServing(absl::Seconds(absl::GetFlag(FLAGS_start_timeout_s)));
  if (!groups.ok()) {
    started.error = std::string(groups.status().message());
    return std::vector<Row>{started};
  }
  started.groups = *groups;
  started.plan_used = cluster.PlanUsed();
  started.step_trace = cluster.step_trace();
  ASSIGN_OR_RETURN(const ModelInfo model, FetchModelInfo(cluster.url(), ""));
  ASSIGN_OR_RETURN(WorkloadKind kind, ParseWorkloadKind(absl::GetFlag(FLAGS_workload)));
  const WorkloadOptions workload{.kind = kind,
                                 .num_requests = absl::GetFlag(FLAGS_requests_per_worker) * workers,
                                 .input_len = absl::GetFlag(FLAGS_input_len),
                                 .output_len = absl::GetFlag(FLAGS_output_len),
                                 .prefix_len = absl::GetFlag(FLAGS_prefix_len),
                                 .num_turns = 4,
                                 .num_conversations = absl::GetFlag(FLAGS_requests_per_worker) * workers,
                                 .vocab_low = 10,
                                 .vocab_high = static_cast<int32_t>(model.vocab_size > 0 ? model.vocab_size : 1000),
                                 .seed = absl::GetFlag(FLAGS_seed)};
  std::vector<Row> rows;
  for (size_t level = 0; level < levels.size(); ++level) {
    Row row = started;
    row.concurrency = levels[level] * workers;
    // Each level's own prompts, so that no level hits what an earlier one cached.
    WorkloadOptions level_workload = workload;
    level_workload.seed += level;
    if (const int64_t waves = absl::GetFlag(FLAGS_waves); waves > 0) {
      level_workload.num_requests = level_workload.num_conversations = waves * row.concurrency;
    }
    row.workload = level_workload;
    ASSIGN_OR_RETURN(std::vector<Session> sessions, GenerateWorkload(level_workload));
    const LoadOptions load{.url = cluster.url(), .model = model.id, .concurrency = row.concurrency};
    // The run's own migrations: start-up calibrates with a transfer.
    const std::string migrated = "mlaserve_remote_prefix_tokens_total{outcome=\"migrated\"}";
    const std::string transferred = "mlaserve_kv_transfer_bytes_total";
    const double migrated_before = cluster.Metric(migrated), transferred_before = cluster.Metric(transferred);
    ASSIGN_OR_RETURN(LoadResult result, RunLoad(sessions, load));
    row.summary = Summarize(result.requests, result.duration_s);
    row.migrated_tokens = cluster.Metric(migrated) - migrated_before;
    row.transfer_bytes = cluster.Metric(transferred) - transferred_before;
    rows.push_back(std::move(row));
  }
  return rows;
}

std::string CsvHeader() {
  return "workers,plan,concurrency,tp,dp_attention,ep,groups,status,completed,failed,duration_s,output_tok_s,input_tok_"
         "s,output_tok_s_per_worker,"
         "ttft_p50_ms,ttft_p99_ms,tpot_p50_ms,tpot_p99_ms,itl_p50_ms,itl_p99_ms,prefix_hit_rate,migrated_tokens,"
         "kv_transfer_bytes";
}

std::string CsvLine(const Row& r) {
  const BenchmarkSummary& s = r.summary;
  return absl::StrCat(r.workers, ",", r.plan, ",", r.concurrency, ",", r.plan_used.tp, ",", r.plan_used.dp_attention,
                      ",", r.plan_used.ep, ",", r.groups, ",", r.error.empty() ? "ok" : "failed", ",", s.completed, ",",
                      s.failed, ",", s.duration_s, ",", s.output_throughput, ",", s.input_throughput, ",",
                      s.output_throughput / r.workers, ",", s.ttft_ms.p50, ",", s.ttft_ms.p99, ",", s.tpot_ms.p50, ",",
                      s.tpot_ms.p99, ",", s.itl_ms.p50, ",", s.itl_ms.p99, ",", s.prefix_cache_hit_rate, ",",
                      r.migrated_tokens, ",", r.transfer_bytes);
}

// A gnuplot chart of column `column` of a CSV like scale.csv against column
// `x`, a line per `series` (a prefix of the rows, as grep sees them).
std::string ChartScript(const std::string& csv, const std::vector<std::pair<std::string, std::string>>& series, int x,
                        const std::string& xlabel, int column, const std::string& ylabel, const std::string& png) {
  std::vector<std::string> lines;
  for (const auto& [prefix, title] : series) {
    lines.push_back(absl::StrCat("'< grep \"", prefix, "\" ", csv, " | grep \",ok,\"' using ", x, ":", column,
                                 " with linespoints title '", title, "'"));
  }
  return absl::StrCat("set terminal pngcairo size 800,500\nset output '", png,
                      "'\nset datafile separator ','\nset xlabel '", xlabel, "'\nset ylabel '", ylabel,
                      "'\nset key top left\nset grid\nset logscale x 2\nplot ", absl::StrJoin(lines, ", "), "\n");
}

absl::Status Run() {
  if (absl::GetFlag(FLAGS_model).empty()) return absl::InvalidArgumentError("--model is required");
  absl::SetFlag(&FLAGS_model, std::filesystem::absolute(ResolveUserPath(absl::GetFlag(FLAGS_model))).string());
  const std::string out = std::filesystem::absolute(ResolveUserPath(absl::GetFlag(FLAGS_out))).string();
  absl::SetFlag(&FLAGS_out, out);
  std::filesystem::create_directories(out);
  std::vector<int> sizes;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_workers), ',', absl::SkipEmpty())) {
    int n;
    if (!absl::SimpleAtoi(s, &n) || n < 1) return absl::InvalidArgumentError(absl::StrCat("--workers: '", s, "'"));
    sizes.push_back(n);
  }
  const std::vector<std::string> plans = absl::StrSplit(absl::GetFlag(FLAGS_plans), ',', absl::SkipEmpty());
  for (const std::string& plan : plans) RETURN_IF_ERROR(PlanFor(plan, 1).status());
  ASSIGN_OR_RETURN(const std::vector<int64_t> levels,
                   ParseConcurrencyList(absl::GetFlag(FLAGS_concurrency_per_worker)));
  const std::string csv = out + "/scale.csv";
  // The highest load level of each cluster: what the charts against cluster size show.
  const std::string top_csv = out + "/scale_top_load.csv";
  std::ofstream table(csv), top_table(top_csv);
  table << CsvHeader() << "\n";
  top_table << CsvHeader() << "\n";
  nlohmann::json json = nlohmann::json::array();
  int port = absl::GetFlag(FLAGS_base_port);
  int done = 0;
  for (int workers : sizes) {
    for (const std::string& name : plans) {
      ASSIGN_OR_RETURN(const Plan plan, PlanFor(name, workers));
      std::cerr << "scale_bench: [" << ++done << "/" << sizes.size() * plans.size() << "] " << workers
                << " worker(s), plan " << name << "\n";
      ASSIGN_OR_RETURN(const std::vector<Row> rows, Measure(workers, plan, levels, port));
      port += 3;
      for (const Row& row : rows) {
        std::cerr << "scale_bench:   "
                  << (row.error.empty() ? absl::StrCat(row.groups, " group(s), ", row.concurrency, " in flight, ",
                                                       row.summary.completed, " done, ", row.summary.output_throughput,
                                                       " output tok/s, TTFT p50 ", row.summary.ttft_ms.p50,
                                                       " ms, TPOT p50 ", row.summary.tpot_ms.p50, " ms")
                                        : "failed: " + row.error)
                  << "\n";
        table << CsvLine(row) << "\n";
        if (&row == &rows.back()) top_table << CsvLine(row) << "\n";
        nlohmann::json entry = ToJson(row.summary);
        entry["workers"] = workers;
        entry["plan"] = name;
        entry["concurrency"] = row.concurrency;
        entry["groups"] = row.groups;
        entry["tp"] = row.plan_used.tp;
        entry["dp_attention"] = row.plan_used.dp_attention;
        entry["ep"] = row.plan_used.ep;
        entry["error"] = row.error;
        entry["migrated_tokens"] = row.migrated_tokens;
        entry["kv_transfer_bytes"] = row.transfer_bytes;
        entry["kv_blocks"] = row.plan_used.kv_blocks;
        entry["block_size"] = row.plan_used.block_size;
        entry["step_trace"] = row.step_trace;
        const WorkloadOptions& w = row.workload;
        entry["workload"] = {{"kind", absl::GetFlag(FLAGS_workload)}, {"num_requests", w.num_requests},
                             {"input_len", w.input_len},          {"output_len", w.output_len},
                             {"prefix_len", w.prefix_len},         {"num_turns", w.num_turns},
                             {"num_conversations", w.num_conversations}, {"vocab_low", w.vocab_low},
                             {"vocab_high", w.vocab_high},         {"seed", w.seed}};
        json.push_back(entry);
      }
    }
  }
  table.close();
  top_table.close();
  std::ofstream(out + "/scale.json") << json.dump(2) << "\n";
  const struct {
    int column;
    const char* ylabel;
    const char* name;
  } charts[] = {{12, "output tokens/s", "throughput"},
                {14, "output tokens/s per worker", "efficiency"},
                {15, "TTFT p50 (ms)", "ttft"},
                {17, "TPOT p50 (ms)", "tpot"}};
  std::vector<std::pair<std::string, std::string>> by_plan, by_cluster;
  for (const std::string& plan : plans) by_plan.emplace_back(absl::StrCat(",", plan, ","), plan);
  for (int workers : sizes) {
    for (const std::string& plan : plans) {
      by_cluster.emplace_back(absl::StrCat("^", workers, ",", plan, ","), absl::StrCat(workers, " ", plan));
    }
  }
  for (const auto& chart : charts) {
    const std::string png = absl::StrCat(out, "/", chart.name, ".png");
    RETURN_IF_ERROR(RunGnuplot(ChartScript(top_csv, by_plan, 1, "workers", chart.column, chart.ylabel, png),
                               absl::StrCat(out, "/", chart.name, ".gp")));
  }
  // Latency against load, a line per cluster.
  for (const auto& [column, ylabel, name] :
       {std::tuple{15, "TTFT p50 (ms)", "ttft_load"}, std::tuple{17, "TPOT p50 (ms)", "tpot_load"}}) {
    const std::string png = absl::StrCat(out, "/", name, ".png");
    RETURN_IF_ERROR(RunGnuplot(ChartScript(csv, by_cluster, 3, "requests in flight", column, ylabel, png),
                               absl::StrCat(out, "/", name, ".gp")));
  }
  std::cout << "scale_bench: wrote " << csv << ", scale.json and PNGs (throughput, efficiency, ttft, tpot against "
            << "workers; ttft_load, tpot_load against load) in " << out << "\n";
  return absl::OkStatus();
}

}  // namespace
}  // namespace mlaserve::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = mlaserve::bench::Run();
  if (!status.ok()) {
    std::cerr << "scale_bench: " << status << "\n";
    return 1;
  }
  return 0;
}
