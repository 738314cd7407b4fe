// Where decode context parallelism keeps a replica's KV blocks: the head
// shards (TP ranks) of an attention replica hold its blocks between them,
// block b of the coordinator's tables on shard b % tp, at index b / tp of
// that shard's pool. A replica of pools of n blocks then holds n * tp blocks,
// and the consecutive blocks of a sequence (allocated in turn) fall on the
// shards in turn.
#ifndef MLASERVE_WORKER_KV_SHARDS_H_
#define MLASERVE_WORKER_KV_SHARDS_H_

#include <cstdint>
#include <vector>

namespace mlaserve {

// Block `block` in shard `shard`'s pool, or kBlockElsewhere (kernels/ops.h)
// when another shard holds it.
// REQUIRES: block >= 0, 0 <= shard < shards.
int32_t HeldBlock(int32_t block, int shards, int shard);

// `table` as shard `shard` sees it: HeldBlock of every entry.
std::vector<int32_t> HeldBlockTable(const std::vector<int32_t>& table, int shards, int shard);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_KV_SHARDS_H_
