// Moves latent KV blocks between engine groups: the coordinator decides what
// moves (it owns the block tables), the workers move the bytes. Over a link
// -- a two-rank communicator per ordered pair of workers, made through the
// rendezvous store (at start-up for the pairs disaggregation crosses, see
// Connect; else on first use), kept, renamed after a failure, one transfer at
// a time, blocks as their bytes -- between GPU workers on distinct GPUs
// (NCCL) and, with KvLinks::kAll, between CPU workers (Gloo); otherwise over
// TCP (Worker.PullBlocks / ReadBlocks, chunked and streamed, so a transfer's
// chunks are in flight while earlier ones are written; values in the source
// pool's element type). Every rank of an attention replica
// holds the same latent KV (groups under decode context parallelism, whose
// ranks share it out, move none), so a copy crosses between groups once: from the
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
#include "absl/strings/string_view.h"
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

// Which pairs of workers move KV over a link rather than the TCP pull.
enum class KvLinks {
  kGpus,  // workers on distinct GPUs (NCCL cannot link a GPU to itself)
  kAll,   // also pairs of CPU workers (Gloo), without the pull's gRPC streams and host conversions
};
// "gpus" or "all"; InvalidArgument naming the flag otherwise.
absl::StatusOr<KvLinks> ParseKvLinks(absl::string_view name);
// Whether KV from `from` into `into` goes over a link: both on distinct GPUs,
// or (kAll) both on CPUs.
bool UsesLink(const WorkerInfo& from, const WorkerInfo& into, KvLinks links);

class KvTransfer {
 public:
  KvTransfer(ServingMetrics& metrics, absl::Duration timeout, KvLinks links = KvLinks::kGpus)
      : metrics_(metrics), timeout_(timeout), links_mode_(links) {}

  // Copies src.blocks into dst.blocks (same count) on every rank of dst.
  // The caller keeps both sets of blocks reserved meanwhile. On failure some
  // destination blocks may hold partial data: the caller frees them.
  absl::Status Copy(const ReplicaBlocks& src, const ReplicaBlocks& dst);
  // Makes the link from `from` into `into` now (a transfer of no blocks), so
  // that the first copy does not wait for it (0.6 s for NCCL); true when this
  // call made it. OK and false at once for a pair that pulls or whose link is
  // already made. A failure leaves the link to be made on first use.
  absl::StatusOr<bool> Connect(const WorkerInfo& from, const WorkerInfo& into);

 private:
  // Copies between two workers by whichever path suits them; the bytes moved.
  absl::StatusOr<int64_t> CopyBetween(const WorkerInfo& from, const std::vector<int32_t>& from_blocks,
                                      const WorkerInfo& into, const std::vector<int32_t>& into_blocks);
  absl::StatusOr<int64_t> Pull(const WorkerInfo& into, const std::string& from_address,
                               const std::vector<int32_t>& from_blocks, const std::vector<int32_t>& into_blocks);
  absl::StatusOr<int64_t> OverLink(const WorkerInfo& from, const std::vector<int32_t>& from_blocks,
                                   const WorkerInfo& into, const std::vector<int32_t>& into_blocks);

  // One link between a pair of workers: its transfers in turn; a failure
  // bumps the generation so the next one makes a fresh link.
  struct Link {
    absl::Mutex mu;
    int generation ABSL_GUARDED_BY(mu) = 0;
    bool made ABSL_GUARDED_BY(mu) = false;  // this generation's link exists on both workers
  };
  Link& LinkBetween(int32_t from, int32_t into);
  absl::StatusOr<int64_t> OverLinkLocked(Link& link, const WorkerInfo& from, const std::vector<int32_t>& from_blocks,
                                         const WorkerInfo& into, const std::vector<int32_t>& into_blocks)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(link.mu);

  ServingMetrics& metrics_;
  const absl::Duration timeout_;
  const KvLinks links_mode_;
  absl::Mutex mu_;
  std::map<std::pair<int32_t, int32_t>, std::unique_ptr<Link>> links_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_KV_TRANSFER_H_
