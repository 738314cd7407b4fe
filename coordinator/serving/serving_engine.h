// The coordinator's Engine: validates requests, has the Router pick each
// one's engine group (moving a prefix cached elsewhere when that is cheaper),
// and keeps track of which group serves which request so that cancellation
// and worker failure reach it. Sequences leaving a group (drain,
// prefill/decode disaggregation) go through the SequenceMover.
#ifndef MLASERVE_COORDINATOR_SERVING_SERVING_ENGINE_H_
#define MLASERVE_COORDINATOR_SERVING_SERVING_ENGINE_H_

#include <atomic>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "coordinator/serving/engine.h"
#include "coordinator/serving/engine_group.h"
#include "coordinator/serving/kv_transfer.h"
#include "coordinator/serving/metrics.h"
#include "coordinator/serving/router.h"
#include "coordinator/serving/sequence_mover.h"

namespace mlaserve {

struct ServingOptions {
  std::string model_name;
  // Whether a prefix cached by a busy group moves to the chosen one (kAuto:
  // when the calibrated cost model says moving is cheaper).
  MigrationPolicy migration = MigrationPolicy::kAuto;
  absl::Duration transfer_timeout = absl::Seconds(60);
  KvLinks kv_links = KvLinks::kGpus;
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
  // How many groups can take requests, the workers of every group that has
  // not failed (draining ones included), and the ids of the groups that
  // stopped serving (failed, drained) since the last call, each reported once
  // so that their rendezvous keys can go.
  struct GroupCensus {
    std::set<int32_t> busy_workers;
    int serving_groups = 0;
    std::vector<int32_t> newly_ended;
  };
  GroupCensus TakeCensus();
  // How many groups Health() says the cluster is planned to have.
  void SetPlannedGroups(int groups) { planned_groups_ = groups; }
  // Fails the groups holding `worker_id`; other groups keep serving.
  void OnWorkerDeath(int32_t worker_id);
  // Moves every sequence of the group holding `worker_id` to other groups,
  // then retires its workers. FailedPrecondition when no other group can
  // take them.
  absl::Status DrainWorker(int32_t worker_id);
  // Makes the links (KvTransfer::Connect) that disaggregated handoffs cross
  // -- every prefill replica's first rank into every decode replica's first
  // rank, and that on into its replica's other ranks -- before a request
  // needs them. Other pairs (prefix moves, drains) link on first use: they
  // are many and seldom used. Failures are logged; those links are made on
  // first use. Returns how many links it made.
  int ConnectHandoffLinks();
  // Measures what the migration cost model needs: KV transfer bandwidth
  // between two groups (a prefill group into a decode group when there are
  // such) and the prefill rate (needs two idle groups; else migration keeps
  // its default of moving whenever another group holds more).
  absl::Status Calibrate(int64_t bytes_per_block);
  // The start of a graceful shutdown: from now on Submit refuses (Unavailable)
  // and Health says so, while the requests in flight go on.
  void StopAdmitting();
  // Waits up to `timeout` for every request in flight to finish; returns how
  // many are still running.
  int64_t AwaitIdle(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);

  absl::StatusOr<int64_t> Submit(GenerateInput input, UpdateCallback on_update) override;
  void Cancel(int64_t request_id) override;
  const Tokenizer& tokenizer() const override { return tokenizer_; }
  const ModelConfig& model_config() const override { return config_; }
  const std::string& model_name() const override { return options_.model_name; }
  int64_t max_context() const override { return config_.max_position_embeddings; }
  std::vector<GroupKvCapacity> KvCapacity() const override;
  EngineHealth Health() const override;

 private:
  absl::Status Validate(const GenerateInput& input) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Every group, for the router.
  std::vector<EngineGroup*> Groups() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // SequenceMover's Claim.
  EngineGroup* ClaimMoveDestination(EngineGroup* from, int64_t request_id) ABSL_LOCKS_EXCLUDED(mu_);

  const Tokenizer& tokenizer_;
  const ModelConfig& config_;
  const ServingOptions options_;
  ServingMetrics& metrics_;
  WorkerRegistry* registry_;
  KvTransfer transfer_;
  Router router_;
  std::atomic<int64_t> next_id_{1};

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<EngineGroup>> groups_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, EngineGroup*> request_group_ ABSL_GUARDED_BY(mu_);
  std::set<int32_t> reported_ended_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> planned_groups_{0};
  std::atomic<bool> admitting_{true};
  std::mt19937_64 seed_rng_ ABSL_GUARDED_BY(mu_){std::random_device{}()};
  // Declared after what its moves use, so that it waits for them before
  // those go.
  SequenceMover mover_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_SERVING_ENGINE_H_
