// The coordinator's Engine: validates requests, routes each to an engine
// group (the longest cached prefix wins unless that group is much busier than
// the least loaded one), and keeps track of which group serves which request
// so that cancellation and worker failure reach it.
#ifndef MLASERVE_COORDINATOR_SERVING_ENGINE_H_
#define MLASERVE_COORDINATOR_SERVING_ENGINE_H_

#include <atomic>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "coordinator/engine.h"
#include "coordinator/engine_group.h"
#include "coordinator/metrics.h"

namespace mlaserve {

struct ServingOptions {
  std::string model_name;
  int64_t max_queued_requests = 1024;  // waiting + running over all groups
  // A busier group still wins on its cached prefix while its load exceeds the
  // least loaded group's by at most this many requests.
  int64_t cache_affinity_slack = 8;
};

class ServingEngine final : public Engine {
 public:
  // `registry` (may be null) supplies the worker counts of Health().
  ServingEngine(const Tokenizer& tokenizer, const ModelConfig& config, ServingOptions options,
                ServingMetrics& metrics, const WorkerRegistry* registry);
  ~ServingEngine() override;

  void AddGroup(std::unique_ptr<EngineGroup> group);
  // Fails the groups holding `worker_id`; other groups keep serving.
  void OnWorkerDeath(int32_t worker_id);

  absl::StatusOr<int64_t> Submit(GenerateInput input, UpdateCallback on_update) override;
  void Cancel(int64_t request_id) override;
  const Tokenizer& tokenizer() const override { return tokenizer_; }
  const ModelConfig& model_config() const override { return config_; }
  const std::string& model_name() const override { return options_.model_name; }
  int64_t max_context() const override { return config_.max_position_embeddings; }
  EngineHealth Health() const override;

 private:
  absl::Status Validate(const GenerateInput& input) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  EngineGroup* Route(const std::vector<int32_t>& prompt) ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const Tokenizer& tokenizer_;
  const ModelConfig& config_;
  const ServingOptions options_;
  ServingMetrics& metrics_;
  const WorkerRegistry* registry_;
  std::atomic<int64_t> next_id_{1};

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<EngineGroup>> groups_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, EngineGroup*> request_group_ ABSL_GUARDED_BY(mu_);
  std::mt19937_64 seed_rng_ ABSL_GUARDED_BY(mu_){std::random_device{}()};
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_ENGINE_H_
