// The paged latent KV cache of one worker. A block holds `block_size` tokens
// of one row each (c_kv then k_rope, kernels/latent_row.h) for every layer,
// laid out [num_blocks, num_layers, block_size, row width] so that one block
// is one contiguous span (moving a block is one copy). The cache owns the memory and
// a free list; who owns which block (block tables, prefix sharing) is the
// caller's business: the coordinator in a cluster, the runner in the CLI.
#ifndef MLASERVE_WORKER_KV_CACHE_H_
#define MLASERVE_WORKER_KV_CACHE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "kernels/latent_row.h"
#include "kernels/ops.h"

namespace mlaserve {

class KvCache {
 public:
  // REQUIRES: num_blocks > 0 and block_size > 0 (else InvalidArgument).
  static absl::StatusOr<KvCache> Create(Ops& ops, const ModelConfig& config, int64_t num_blocks, int64_t block_size,
                                        KvCacheDtype dtype = KvCacheDtype::kStorage);

  // `num_blocks` distinct free blocks, or ResourceExhausted (nothing taken).
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t num_blocks);
  // Returns blocks to the free list; a block not currently allocated is an error.
  absl::Status Free(const std::vector<int32_t>& blocks);

  Tensor& pool() { return pool_; }
  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t num_free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t bytes_per_block() const { return static_cast<int64_t>(pool_.num_bytes()) / num_blocks_; }

 private:
  KvCache() = default;
  Tensor pool_;
  int64_t block_size_ = 0;
  int64_t num_blocks_ = 0;
  std::vector<int32_t> free_;
  std::vector<bool> allocated_;
};

// The blocks a sequence needs for `num_positions` tokens.
int64_t BlocksFor(int64_t num_positions, int64_t block_size);

// The bytes of one block of `config`'s cache (what Create takes per block on
// a backend storing `storage`): what the coordinator divides a worker's free
// memory by.
int64_t KvBlockBytes(const ModelConfig& config, int64_t block_size, DType storage,
                     KvCacheDtype dtype = KvCacheDtype::kStorage);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_KV_CACHE_H_
