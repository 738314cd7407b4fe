#include "coordinator/serving/metrics.h"

#include <vector>

#include "prometheus/text_serializer.h"

namespace mlaserve {
namespace {

prometheus::Histogram& MakeHistogram(prometheus::Registry& registry, const std::string& name,
                                     const std::string& help, std::vector<double> buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, std::move(buckets));
}

prometheus::Family<prometheus::Gauge>& MakeGauges(prometheus::Registry& registry, const std::string& name,
                                                  const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}

prometheus::Counter& MakeCounter(prometheus::Registry& registry, const std::string& name, const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

const std::vector<double> kLatencyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                             0.5,   1,      2.5,   5,    10,    30,   60,  120};

}  // namespace

ServingMetrics::ServingMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      ttft_(MakeHistogram(*registry_, "mlaserve_time_to_first_token_seconds", "Time to first token", kLatencyBuckets)),
      tpot_(MakeHistogram(*registry_, "mlaserve_time_per_output_token_seconds", "Time per output token after the first",
                          kLatencyBuckets)),
      e2e_(MakeHistogram(*registry_, "mlaserve_e2e_request_latency_seconds", "End-to-end request latency",
                         kLatencyBuckets)),
      queued_(MakeGauges(*registry_, "mlaserve_num_requests_waiting", "Requests waiting to be scheduled")),
      running_(MakeGauges(*registry_, "mlaserve_num_requests_running", "Requests in the running batch")),
      kv_used_(MakeGauges(*registry_, "mlaserve_kv_blocks_used", "KV cache blocks referenced by requests or the prefix cache")),
      kv_free_(MakeGauges(*registry_, "mlaserve_kv_blocks_free", "KV cache blocks free or evictable")),
      prompt_tokens_(MakeCounter(*registry_, "mlaserve_prompt_tokens_total", "Prompt tokens of admitted requests")),
      prefix_hit_tokens_(MakeCounter(*registry_, "mlaserve_prefix_cache_hit_tokens_total",
                                     "Prompt tokens served from the prefix cache")),
      generation_tokens_(MakeCounter(*registry_, "mlaserve_generation_tokens_total", "Generated tokens")),
      finished_(prometheus::BuildCounter()
                    .Name("mlaserve_requests_total")
                    .Help("Finished requests by outcome")
                    .Register(*registry_)),
      rejected_(MakeCounter(*registry_, "mlaserve_requests_rejected_total", "Requests refused at admission")),
      preemptions_(MakeCounter(*registry_, "mlaserve_preemptions_total",
                               "Sequences preempted for lack of KV blocks (recomputed later)")),
      context_parallel_chunks_(MakeCounter(*registry_, "mlaserve_context_parallel_chunks_total",
                                           "Prompt chunks split over a group's attention replicas")),
      context_parallel_tokens_(MakeCounter(*registry_, "mlaserve_context_parallel_tokens_total",
                                           "Prompt tokens computed in chunks split over attention replicas")),
      kv_transfer_bytes_(MakeCounter(*registry_, "mlaserve_kv_transfer_bytes_total", "Latent KV bytes moved between workers")),
      kv_transfer_blocks_(MakeCounter(*registry_, "mlaserve_kv_transfer_blocks_total", "KV blocks moved between groups")),
      kv_transfer_seconds_(MakeHistogram(*registry_, "mlaserve_kv_transfer_seconds", "Latency of one KV transfer",
                                         kLatencyBuckets)),
      kv_transfer_failures_(MakeCounter(*registry_, "mlaserve_kv_transfer_failures_total", "KV transfers that failed")),
      kv_links_(prometheus::BuildCounter()
                    .Name("mlaserve_kv_links_total")
                    .Help("Links between workers made for KV transfers, at start-up or on first use")
                    .Register(*registry_)),
      remote_prefix_tokens_(prometheus::BuildCounter()
                                .Name("mlaserve_remote_prefix_tokens_total")
                                .Help("Prompt tokens cached by another group: migrated or recomputed")
                                .Register(*registry_)),
      moved_(prometheus::BuildCounter()
                 .Name("mlaserve_sequences_moved_total")
                 .Help("Running sequences moved to another group, by reason")
                 .Register(*registry_)),
      engine_steps_(MakeCounter(*registry_, "mlaserve_engine_steps_total", "Turns of the engine loops")),
      engine_step_sequences_(MakeCounter(*registry_, "mlaserve_engine_step_sequences_total",
                                         "Sequences launched, summed over engine steps")),
      engine_host_seconds_(MakeCounter(*registry_, "mlaserve_engine_host_seconds_total",
                                       "Host time of the engine loops: scheduling, building steps, applying tokens")),
      engine_wait_seconds_(MakeCounter(*registry_, "mlaserve_engine_wait_seconds_total",
                                       "Time the engine loops waited for their workers' steps")) {}

void ServingMetrics::CountFinished(FinishReason reason) {
  finished_.Add({{"outcome", FinishReasonName(reason)}}).Increment();
}

std::string ServingMetrics::Serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace mlaserve
