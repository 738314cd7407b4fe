// The coordinator's Prometheus metrics (prometheus-cpp's registry and text
// serializer): request latency histograms, queue and batch gauges, KV block
// usage, prefix-cache hits, requests by outcome. Thread-safe.
#ifndef MLASERVE_COORDINATOR_SERVING_METRICS_H_
#define MLASERVE_COORDINATOR_SERVING_METRICS_H_

#include <memory>
#include <string>

#include "coordinator/serving/request.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace mlaserve {

class ServingMetrics {
 public:
  ServingMetrics();

  void ObserveTimeToFirstToken(double seconds) { ttft_.Observe(seconds); }
  void ObserveTimePerOutputToken(double seconds) { tpot_.Observe(seconds); }
  void ObserveEndToEnd(double seconds) { e2e_.Observe(seconds); }
  // Per engine group `group`.
  void SetQueued(const std::string& group, double n) { queued_.Add({{"group", group}}).Set(n); }
  void SetRunning(const std::string& group, double n) { running_.Add({{"group", group}}).Set(n); }
  void SetKvBlocks(const std::string& group, double used, double free) {
    kv_used_.Add({{"group", group}}).Set(used);
    kv_free_.Add({{"group", group}}).Set(free);
  }
  void AddPromptTokens(double computed, double cached) {
    prompt_tokens_.Increment(computed + cached);
    prefix_hit_tokens_.Increment(cached);
  }
  void AddGenerationTokens(double n) { generation_tokens_.Increment(n); }
  void CountFinished(FinishReason reason);
  void CountRejected() { rejected_.Increment(); }
  void CountPreemptions(double n) { preemptions_.Increment(n); }
  // Prompt chunks split over a group's attention replicas, and their tokens.
  void CountContextParallelChunk(double tokens) {
    context_parallel_chunks_.Increment();
    context_parallel_tokens_.Increment(tokens);
  }
  // KV transfers between workers: one finished or failed copy.
  void ObserveKvTransfer(double bytes, double blocks, double seconds) {
    kv_transfer_bytes_.Increment(bytes);
    kv_transfer_blocks_.Increment(blocks);
    kv_transfer_seconds_.Observe(seconds);
  }
  void CountKvTransferFailure() { kv_transfer_failures_.Increment(); }
  // A link between two workers made, "start" (before a transfer needed it)
  // or "first_use" (by the transfer).
  void CountKvLinkMade(const std::string& when) { kv_links_.Add({{"when", when}}).Increment(); }
  // Prompt tokens another group had cached, by what happened to them:
  // "migrated" (moved here) or "recomputed" (moving was dearer or failed).
  void AddRemotePrefixTokens(const std::string& outcome, double n) {
    remote_prefix_tokens_.Add({{"outcome", outcome}}).Increment(n);
  }
  // Running sequences moved to another group ("drain", "disaggregation").
  void CountSequenceMoved(const std::string& reason) { moved_.Add({{"reason", reason}}).Increment(); }
  // One turn of an engine loop: the sequences it launched, the host time it
  // spent and the time it waited for the workers.
  void ObserveEngineStep(double sequences, double host_seconds, double wait_seconds) {
    engine_steps_.Increment();
    engine_step_sequences_.Increment(sequences);
    engine_host_seconds_.Increment(host_seconds);
    engine_wait_seconds_.Increment(wait_seconds);
  }

  // Prometheus text exposition format.
  std::string Serialize() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& tpot_;
  prometheus::Histogram& e2e_;
  prometheus::Family<prometheus::Gauge>& queued_;
  prometheus::Family<prometheus::Gauge>& running_;
  prometheus::Family<prometheus::Gauge>& kv_used_;
  prometheus::Family<prometheus::Gauge>& kv_free_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& prefix_hit_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Counter& rejected_;
  prometheus::Counter& preemptions_;
  prometheus::Counter& context_parallel_chunks_;
  prometheus::Counter& context_parallel_tokens_;
  prometheus::Counter& kv_transfer_bytes_;
  prometheus::Counter& kv_transfer_blocks_;
  prometheus::Histogram& kv_transfer_seconds_;
  prometheus::Counter& kv_transfer_failures_;
  prometheus::Family<prometheus::Counter>& kv_links_;
  prometheus::Family<prometheus::Counter>& remote_prefix_tokens_;
  prometheus::Family<prometheus::Counter>& moved_;
  prometheus::Counter& engine_steps_;
  prometheus::Counter& engine_step_sequences_;
  prometheus::Counter& engine_host_seconds_;
  prometheus::Counter& engine_wait_seconds_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_METRICS_H_
