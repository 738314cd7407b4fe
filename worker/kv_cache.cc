#include "worker/kv_cache.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mlaserve {

int64_t BlocksFor(int64_t num_positions, int64_t block_size) {
  return (num_positions + block_size - 1) / block_size;
}

namespace {

// The element type and width of a cache row.
std::pair<DType, int64_t> RowOf(const ModelConfig& config, DType storage, KvCacheDtype dtype) {
  if (dtype == KvCacheDtype::kFp8) {
    return {DType::kU8, Fp8LatentRow{config.kv_lora_rank, config.qk_rope_head_dim}.bytes()};
  }
  return {storage, config.latent_dim()};
}

}  // namespace

int64_t KvBlockBytes(const ModelConfig& config, int64_t block_size, DType storage, KvCacheDtype dtype) {
  return config.num_hidden_layers * block_size *
         LatentRowBytes(config.kv_lora_rank, config.qk_rope_head_dim, DTypeBytes(storage), dtype);
}

absl::StatusOr<KvCache> KvCache::Create(Ops& ops, const ModelConfig& config, int64_t num_blocks, int64_t block_size,
                                        KvCacheDtype dtype) {
  if (num_blocks <= 0 || block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache needs positive num_blocks and block_size, got ", num_blocks, " and ", block_size));
  }
  KvCache cache;
  const auto [element, width] = RowOf(config, ops.storage_dtype(), dtype);
  ASSIGN_OR_RETURN(cache.pool_, ops.Empty(element, {num_blocks, config.num_hidden_layers, block_size, width}));
  cache.block_size_ = block_size;
  cache.num_blocks_ = num_blocks;
  cache.allocated_.assign(num_blocks, false);
  // Hand out low block ids first: deterministic layouts make failures reproducible.
  for (int64_t b = num_blocks - 1; b >= 0; --b) cache.free_.push_back(static_cast<int32_t>(b));
  return cache;
}

absl::StatusOr<std::vector<int32_t>> KvCache::Allocate(int64_t num_blocks) {
  if (num_blocks > num_free_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache: ", num_blocks, " blocks wanted, ", num_free_blocks(), " free"));
  }
  std::vector<int32_t> blocks(free_.end() - num_blocks, free_.end());
  free_.resize(free_.size() - num_blocks);
  std::reverse(blocks.begin(), blocks.end());
  for (int32_t b : blocks) allocated_[b] = true;
  return blocks;
}

absl::Status KvCache::Free(const std::vector<int32_t>& blocks) {
  std::vector<bool> seen(num_blocks_, false);
  for (int32_t b : blocks) {
    if (b < 0 || b >= num_blocks_ || !allocated_[b] || seen[b]) {
      return absl::FailedPreconditionError(absl::StrCat("KV cache: block ", b, " freed but not allocated"));
    }
    seen[b] = true;
  }
  for (int32_t b : blocks) {
    allocated_[b] = false;
    free_.push_back(b);
  }
  return absl::OkStatus();
}

}  // namespace mlaserve
