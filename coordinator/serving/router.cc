#include "coordinator/serving/router.h"

namespace mlaserve {

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
