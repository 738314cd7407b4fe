#include "coordinator/serving/router.h"

#include <limits>

namespace mlaserve {

Router::Route Router::Choose(absl::Span<EngineGroup* const> groups, const std::vector<int32_t>& prompt) const {
  bool has_prefill_groups = false;
  for (const EngineGroup* group : groups) has_prefill_groups = has_prefill_groups || group->role() == GroupRole::kPrefill;
  EngineGroup* least_loaded = nullptr;
  EngineGroup* best_cached = nullptr;
  Placement least_loaded_placement, best_cached_placement;
  int64_t min_load = std::numeric_limits<int64_t>::max(), best_cached_load = 0;
  for (EngineGroup* group : groups) {
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

EngineGroup* Router::ChooseMoveDestination(absl::Span<EngineGroup* const> groups, EngineGroup* from) {
  EngineGroup* best = nullptr;
  int64_t best_load = 0;
  for (EngineGroup* group : groups) {
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

bool Router::ShouldMigrate(int64_t num_blocks, int64_t block_size) const {
  if (options_.migration != MigrationPolicy::kAuto) return options_.migration == MigrationPolicy::kAlways;
  const double bandwidth = transfer_bytes_per_s_, prefill = prefill_tokens_per_s_;
  if (bandwidth <= 0 || prefill <= 0) return true;
  const double transfer_s = static_cast<double>(num_blocks * bytes_per_block_) / bandwidth;
  return transfer_s < static_cast<double>(num_blocks * block_size) / prefill;
}

void Router::Calibrate(double transfer_bytes_per_s, double prefill_tokens_per_s, int64_t bytes_per_block) {
  bytes_per_block_ = bytes_per_block;
  transfer_bytes_per_s_ = transfer_bytes_per_s;
  prefill_tokens_per_s_ = prefill_tokens_per_s;
}

}  // namespace mlaserve
