// Routing: which engine group serves a new request, where a moving sequence
// goes, and whether a prefix cached by another group moves with a request.
#ifndef MLASERVE_COORDINATOR_SERVING_ROUTER_H_
#define MLASERVE_COORDINATOR_SERVING_ROUTER_H_

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "coordinator/serving/engine_group.h"

namespace mlaserve {

enum class MigrationPolicy { kAuto, kAlways, kNever };

struct RouterOptions {
  // Whether a prefix cached by a busy group moves to the chosen one (kAuto:
  // when the calibrated cost model says moving is cheaper).
  MigrationPolicy migration = MigrationPolicy::kAuto;
  // A busier group still wins on its cached prefix while its load exceeds the
  // least loaded group's by at most this many requests.
  int64_t cache_affinity_slack = 8;
};

// The longest cached prefix wins unless its group is much busier than the
// least loaded one; then the least loaded serves, and the other group is the
// donor whose prefix KV may move over. Thread-safe: the cost model's
// measurements are atomics, everything else is read-only.
class Router {
 public:
  explicit Router(RouterOptions options) : options_(options) {}

  struct Route {
    EngineGroup* group = nullptr;  // null when no live group can serve
    Placement placement;           // within `group`
    EngineGroup* donor = nullptr;  // a busier group caching more of the prompt, if any
    int64_t donor_tokens = 0;      // of the prompt, cached in `donor`
  };
  // Routes a request for `prompt` among `groups`: one walk of each live
  // group's prefix index. New requests start in prefill groups when the
  // cluster has any.
  Route Choose(absl::Span<EngineGroup* const> groups, const std::vector<int32_t>& prompt) const;

  // The group a sequence moving out of `from` goes to: the least loaded live
  // group that decodes, other than `from`; else `from` itself when it is a
  // live prefill group (without decode groups it finishes its own
  // sequences); else null.
  static EngineGroup* ChooseMoveDestination(absl::Span<EngineGroup* const> groups, EngineGroup* from);

  // Whether moving `num_blocks` blocks of latent KV costs less than
  // recomputing their tokens. Uncalibrated, kAuto says yes: MLA's latent KV is
  // small.
  bool ShouldMigrate(int64_t num_blocks, int64_t block_size) const;
  // The cost model's measurements (see ServingEngine::Calibrate).
  // REQUIRES: every argument positive.
  void Calibrate(double transfer_bytes_per_s, double prefill_tokens_per_s, int64_t bytes_per_block);

 private:
  const RouterOptions options_;
  std::atomic<double> transfer_bytes_per_s_{0};  // 0 until calibrated
  std::atomic<double> prefill_tokens_per_s_{0};
  std::atomic<int64_t> bytes_per_block_{0};
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_ROUTER_H_
