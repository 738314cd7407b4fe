#include "worker/kv_shards.h"

#include "kernels/ops.h"

namespace mlaserve {

int32_t HeldBlock(int32_t block, int shards, int shard) {
  return block % shards == shard ? block / shards : kBlockElsewhere;
}

std::vector<int32_t> HeldBlockTable(const std::vector<int32_t>& table, int shards, int shard) {
  std::vector<int32_t> held;
  held.reserve(table.size());
  for (int32_t block : table) held.push_back(HeldBlock(block, shards, shard));
  return held;
}

}  // namespace mlaserve
