// Moves latent KV blocks between engine groups: the coordinator decides what
// moves (it owns the block tables), the workers move the bytes (Worker.
// PullBlocks / ReadBlocks, chunked and streamed, so a transfer's chunks are in
// flight while earlier ones are written). Every rank of an attention replica
// holds the same latent KV, so a copy crosses between groups once: from the
// source replica's first rank to the destination replica's first rank, which
// then fans it out to its replica peers. Copies are independent and may run
// concurrently from several threads.
#ifndef MLASERVE_COORDINATOR_KV_TRANSFER_H_
#define MLASERVE_COORDINATOR_KV_TRANSFER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "coordinator/metrics.h"
#include "coordinator/worker_registry.h"

namespace mlaserve {

// Blocks of one attention replica: its ranks and the block ids there.
struct ReplicaBlocks {
  std::vector<WorkerInfo> ranks;
  std::vector<int32_t> blocks;
};

class KvTransfer {
 public:
  KvTransfer(ServingMetrics& metrics, absl::Duration timeout) : metrics_(metrics), timeout_(timeout) {}

  // Copies src.blocks into dst.blocks (same count) on every rank of dst.
  // The caller keeps both sets of blocks reserved meanwhile. On failure some
  // destination blocks may hold partial data: the caller frees them.
  absl::Status Copy(const ReplicaBlocks& src, const ReplicaBlocks& dst);

 private:
  absl::StatusOr<int64_t> Pull(const WorkerInfo& into, const std::string& from_address,
                               const std::vector<int32_t>& from_blocks, const std::vector<int32_t>& into_blocks);

  ServingMetrics& metrics_;
  const absl::Duration timeout_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_KV_TRANSFER_H_
