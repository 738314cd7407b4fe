// Moves latent KV blocks between engine groups: the coordinator decides what
// moves (it owns the block tables), the workers move the bytes. Between GPU
// workers on distinct GPUs over a two-rank NCCL link per pair of workers
// (made on first use through the rendezvous store, kept, renamed after a
// failure, one transfer at a time); otherwise over TCP (Worker.PullBlocks / ReadBlocks, chunked and
// streamed, so a transfer's chunks are in flight while earlier ones are
// written). Every rank of an attention replica
// holds the same latent KV, so a copy crosses between groups once: from the
// source replica's first rank to the destination replica's first rank, which
// then fans it out to its replica peers. Copies are independent and may run
// concurrently from several threads.
#ifndef MLASERVE_COORDINATOR_SERVING_KV_TRANSFER_H_
#define MLASERVE_COORDINATOR_SERVING_KV_TRANSFER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/serving/metrics.h"
#include "coordinator/cluster/worker_registry.h"

namespace mlaserve {

// Blocks of one attention replica: its ranks and the block ids there.
struct ReplicaBlocks {
  std::vector<WorkerInfo> ranks;
  std::vector<int32_t> blocks;
};

// Whether KV between two workers goes over a NCCL link (else the TCP pull):
// both on GPUs, and not the same GPU, which NCCL cannot link to itself.
bool UsesNcclLink(const WorkerInfo& from, const WorkerInfo& into);

class KvTransfer {
 public:
  KvTransfer(ServingMetrics& metrics, absl::Duration timeout) : metrics_(metrics), timeout_(timeout) {}

  // Copies src.blocks into dst.blocks (same count) on every rank of dst.
  // The caller keeps both sets of blocks reserved meanwhile. On failure some
  // destination blocks may hold partial data: the caller frees them.
  absl::Status Copy(const ReplicaBlocks& src, const ReplicaBlocks& dst);

 private:
  // Copies between two workers by whichever path suits them; the bytes moved.
  absl::StatusOr<int64_t> CopyBetween(const WorkerInfo& from, const std::vector<int32_t>& from_blocks,
                                      const WorkerInfo& into, const std::vector<int32_t>& into_blocks);
  absl::StatusOr<int64_t> Pull(const WorkerInfo& into, const std::string& from_address,
                               const std::vector<int32_t>& from_blocks, const std::vector<int32_t>& into_blocks);
  absl::StatusOr<int64_t> OverLink(const WorkerInfo& from, const std::vector<int32_t>& from_blocks,
                                   const WorkerInfo& into, const std::vector<int32_t>& into_blocks);

  // One NCCL link between a pair of workers: its transfers in turn; a
  // failure bumps the generation so the next one makes a fresh link.
  struct Link {
    absl::Mutex mu;
    int generation = 0;
  };
  Link& LinkBetween(int32_t from, int32_t into);

  ServingMetrics& metrics_;
  const absl::Duration timeout_;
  absl::Mutex mu_;
  std::map<std::pair<int32_t, int32_t>, std::unique_ptr<Link>> links_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_KV_TRANSFER_H_
