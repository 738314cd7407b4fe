// Routing: which engine group serves a new request, where a moving sequence
// goes, and whether a prefix cached by another group moves with a request.
// The rules are written once for any kind of group (the coordinator's
// EngineGroup, the cluster simulator's SimGroup): a Group has
//   bool alive() const;  GroupRole role() const;  int64_t load() const;
//   Placement Place(const std::vector<int32_t>& tokens);
#ifndef MLASERVE_COORDINATOR_SERVING_ROUTER_H_
#define MLASERVE_COORDINATOR_SERVING_ROUTER_H_

#include <atomic>
#include <cstdint>
#include <limits>
#include <vector>

#include "coordinator/serving/placement.h"

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

template <typename Group>
struct Route {
  Group* group = nullptr;  // null when no live group can serve
  Placement placement;     // within `group`
  Group* donor = nullptr;  // a busier group caching more of the prompt, if any
  int64_t donor_tokens = 0;  // of the prompt, cached in `donor`
};

// The longest cached prefix wins unless its group is much busier than the
// least loaded one; then the least loaded serves, and the other group is the
// donor whose prefix KV may move over. Thread-safe: the cost model's
// measurements are atomics, everything else is read-only.
class Router {
 public:
  explicit Router(RouterOptions options) : options_(options) {}

  // Routes a request for `prompt` among `groups`: one walk of each live
  // group's prefix index. New requests start in prefill groups when the
  // cluster has any.
  template <typename Group>
  Route<Group> Choose(const std::vector<Group*>& groups, const std::vector<int32_t>& prompt) const;

  // The group a sequence moving out of `from` goes to: the least loaded live
  // group that decodes, other than `from`; else `from` itself when it is a
  // live prefill group (without decode groups it finishes its own
  // sequences); else null.
  template <typename Group>
  static Group* ChooseMoveDestination(const std::vector<Group*>& groups, Group* from);

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

template <typename Group>
Route<Group> Router::Choose(const std::vector<Group*>& groups, const std::vector<int32_t>& prompt) const {
  bool has_prefill_groups = false;
  for (const Group* group : groups) has_prefill_groups = has_prefill_groups || group->role() == GroupRole::kPrefill;
  Group* least_loaded = nullptr;
  Group* best_cached = nullptr;
  Placement least_loaded_placement, best_cached_placement;
  int64_t min_load = std::numeric_limits<int64_t>::max(), best_cached_load = 0;
  for (Group* group : groups) {
    if (!group->alive() || (group->role() == GroupRole::kDecode && has_prefill_groups)) continue;
    const int64_t load = group->load();
    const Placement placement = group->Place(prompt);
    if (load < min_load) {
      min_load = load;
      least_loaded = group;
      least_loaded_placement = placement;
    }
    const int64_t cached = placement.cached_tokens(), best = best_cached_placement.cached_tokens();
    if (cached > best || (cached == best && best_cached != nullptr && load < best_cached_load)) {
      best_cached = group;
      best_cached_placement = placement;
      best_cached_load = load;
    }
  }
  if (best_cached != nullptr && best_cached_placement.cached_tokens() > 0 &&
      best_cached_load <= min_load + options_.cache_affinity_slack) {
    return {best_cached, best_cached_placement, nullptr, 0};
  }
  if (best_cached == least_loaded) return {least_loaded, least_loaded_placement, nullptr, 0};
  return {least_loaded, least_loaded_placement, best_cached, best_cached_placement.cached_tokens()};
}

template <typename Group>
Group* Router::ChooseMoveDestination(const std::vector<Group*>& groups, Group* from) {
  Group* best = nullptr;
  int64_t best_load = 0;
  for (Group* group : groups) {
    if (group == from || !group->alive() || group->role() == GroupRole::kPrefill) continue;
    const int64_t load = group->load();
    if (best == nullptr || load < best_load) {
      best = group;
      best_load = load;
    }
  }
  if (best == nullptr && from->role() == GroupRole::kPrefill && from->alive()) return from;
  return best;
}

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_ROUTER_H_
