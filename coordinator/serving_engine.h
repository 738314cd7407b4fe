// The coordinator's Engine: validates requests, routes each to an engine
// group (the longest cached prefix wins unless that group is much busier than
// the least loaded one, in which case the prefix's latent KV may move to the
// chosen group when moving costs less than recomputing), and keeps track of
// which group serves which request so that cancellation and worker failure
// reach it. Sequences leaving a group (drain, prefill/decode disaggregation)
// move with their KV to another group and continue there unchanged.
#ifndef MLASERVE_COORDINATOR_SERVING_ENGINE_H_
#define MLASERVE_COORDINATOR_SERVING_ENGINE_H_

#include <atomic>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "coordinator/engine.h"
#include "coordinator/engine_group.h"
#include "coordinator/kv_transfer.h"
#include "coordinator/metrics.h"

namespace mlaserve {

enum class MigrationPolicy { kAuto, kAlways, kNever };

struct ServingOptions {
  std::string model_name;
  // Whether a prefix cached by a busy group moves to the chosen one (kAuto:
  // when the calibrated cost model says moving is cheaper).
  MigrationPolicy migration = MigrationPolicy::kAuto;
  absl::Duration transfer_timeout = absl::Seconds(60);
  int64_t max_queued_requests = 1024;  // waiting + running over all groups
  // A busier group still wins on its cached prefix while its load exceeds the
  // least loaded group's by at most this many requests.
  int64_t cache_affinity_slack = 8;
};

class ServingEngine final : public Engine {
 public:
  // `registry` (may be null) supplies the worker counts of Health() and
  // retires the workers of drained groups.
  ServingEngine(const Tokenizer& tokenizer, const ModelConfig& config, ServingOptions options,
                ServingMetrics& metrics, WorkerRegistry* registry);
  ~ServingEngine() override;

  void AddGroup(std::unique_ptr<EngineGroup> group);
  // Fails the groups holding `worker_id`; other groups keep serving.
  void OnWorkerDeath(int32_t worker_id);
  // Moves every sequence of the group holding `worker_id` to other groups,
  // then retires its workers. FailedPrecondition when no other group can
  // take them.
  absl::Status DrainWorker(int32_t worker_id);
  // Measures what the migration cost model needs: KV transfer bandwidth
  // between two groups and the prefill rate (needs two idle groups; else
  // migration keeps its default of moving whenever another group holds more).
  absl::Status Calibrate(int64_t bytes_per_block);

  absl::StatusOr<int64_t> Submit(GenerateInput input, UpdateCallback on_update) override;
  void Cancel(int64_t request_id) override;
  const Tokenizer& tokenizer() const override { return tokenizer_; }
  const ModelConfig& model_config() const override { return config_; }
  const std::string& model_name() const override { return options_.model_name; }
  int64_t max_context() const override { return config_.max_position_embeddings; }
  EngineHealth Health() const override;

 private:
  struct Routing {
    EngineGroup* group = nullptr;
    int64_t cached_tokens = 0;      // of the prompt, in `group`
    EngineGroup* donor = nullptr;   // the group caching the longest prefix, if another
    int64_t donor_tokens = 0;
  };
  absl::Status Validate(const GenerateInput& input) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  Routing Route(const std::vector<int32_t>& prompt) ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Copies the whole blocks `hold` keeps in `from` into fresh blocks of `to`
  // and enters them into its prefix index for `tokens`; releases the hold.
  absl::Status MigrateBlocks(EngineGroup* from, const BlockHold& hold, const std::vector<int32_t>& tokens,
                             EngineGroup* to);
  // Whether moving `num_blocks` blocks costs less than recomputing their tokens.
  bool ShouldMigrate(int64_t num_blocks, int64_t block_size) const;
  // Moves a sequence `from` hands over to another group (on its own thread).
  void StartMove(EngineGroup* from, std::unique_ptr<Sequence> seq, BlockHold hold);
  void Move(EngineGroup* from, std::unique_ptr<Sequence> seq, BlockHold hold);
  EngineGroup* MoveDestination(EngineGroup* from) ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Retires `group`'s workers once its drain and moves are done.
  void FinishDrain(EngineGroup* group);

  const Tokenizer& tokenizer_;
  const ModelConfig& config_;
  const ServingOptions options_;
  ServingMetrics& metrics_;
  WorkerRegistry* registry_;
  KvTransfer transfer_;
  std::atomic<int64_t> next_id_{1};
  // Calibrated at start-up; 0 until then.
  std::atomic<double> transfer_bytes_per_s_{0};
  std::atomic<double> prefill_tokens_per_s_{0};
  std::atomic<int64_t> bytes_per_block_{0};

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<EngineGroup>> groups_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, EngineGroup*> request_group_ ABSL_GUARDED_BY(mu_);
  std::mt19937_64 seed_rng_ ABSL_GUARDED_BY(mu_){std::random_device{}()};
  // Moves and drains under way, by source group: the destructor waits for them.
  std::map<const EngineGroup*, int> moves_ ABSL_GUARDED_BY(mu_);
  // Requests between groups, and those of them cancelled on the way (the
  // cancellation is applied once they arrive).
  std::set<int64_t> moving_ ABSL_GUARDED_BY(mu_);
  std::set<int64_t> cancelled_while_moving_ ABSL_GUARDED_BY(mu_);
  bool has_prefill_groups_ ABSL_GUARDED_BY(mu_) = false;
  int drains_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_ENGINE_H_
