// Sizes an engine group's KV block pool from what its workers measured once
// their weights were loaded (vLLM's gpu_memory_utilization): a worker may
// fill `gpu_memory_utilization` of its GPU's memory (split evenly among the
// workers sharing that GPU) with what it already holds (weights, the
// activations of the largest step, communication buffers) and its KV pool,
// never more than the GPU has free. Every rank of a group holds a pool of
// the same size, so the rank with the least room sets it. An explicit
// --kv_blocks overrides; a group with a rank that measured nothing (a CPU
// worker, mock compute) gets a fixed default.
#ifndef MLASERVE_COORDINATOR_CLUSTER_KV_SIZING_H_
#define MLASERVE_COORDINATOR_CLUSTER_KV_SIZING_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace mlaserve {

// What one rank reported after loading (LoadShardResponse.memory).
struct RankMemoryReport {
  int32_t worker_id = 0;
  // The memory the worker may use: its GPU's, or less when it offers less
  // (--memory_gb). 0: nothing measured.
  int64_t capacity_bytes = 0;
  int64_t used_bytes = 0;  // held by the worker: weights, activations, buffers
  int64_t free_bytes = 0;  // the GPU's free memory after that
  int sharers = 1;         // workers on the same GPU
};

struct KvSizingOptions {
  int64_t kv_blocks = 0;        // per attention replica; 0: from memory
  int64_t default_blocks = 256;  // when a rank measured nothing
  double gpu_memory_utilization = 0.9;
  int64_t bytes_per_block = 0;  // of one rank's pool
};

enum class KvSource { kExplicit, kDefault, kMemory };

struct KvSizing {
  int64_t num_blocks = 0;  // per attention replica, on every rank
  KvSource source = KvSource::kDefault;
  // With kMemory: the rank with the least room and that room in bytes.
  int32_t limiting_worker = -1;
  int64_t limiting_room_bytes = 0;
  // How the size was chosen, for the startup log.
  std::string ToString() const;
};

// The bytes of KV `rank` has room for under `utilization`: its share of
// utilization x capacity less what it holds, at most its share of the free
// memory (negative when it already holds more than its share).
// REQUIRES: rank.capacity_bytes > 0 and rank.sharers >= 1.
int64_t KvRoomBytes(const RankMemoryReport& rank, double utilization);

// The pool of a group whose ranks reported `ranks`. InvalidArgument for a
// utilization outside (0, 1] or a block size that is not positive;
// ResourceExhausted, naming the worker and its figures, when a rank has no
// room for a single block.
absl::StatusOr<KvSizing> SizeKvPool(absl::Span<const RankMemoryReport> ranks, const KvSizingOptions& options);

// Whether a group's attention replicas spread their KV blocks over their
// head shards (decode context parallelism, worker/kv_shards.h), which
// multiplies a replica's KV room by tp: kOn asks for it, kOff never, kAuto
// when one request of `max_context` tokens would not fit a replica's
// `replica_tokens` otherwise. Needs tp > 1, workers that attend in parts (CPU
// workers, for now) and a mixed-role group (prefill/decode handoffs move a
// replica's KV from its first rank, which holds only a share of it).
enum class DecodeContextParallel { kAuto, kOn, kOff };
// "auto", "on" or "off"; InvalidArgument naming the flag otherwise.
absl::StatusOr<DecodeContextParallel> ParseDecodeContextParallel(absl::string_view name);
struct DecodeContextParallelQuery {
  int tp = 1;
  bool attends_in_parts = false;  // every rank's backend
  bool mixed_role = true;
  int64_t replica_tokens = 0;  // KV room of a replica without it
  int64_t max_context = 0;
};
// The choice for `q`, or InvalidArgument naming what kOn lacks.
absl::StatusOr<bool> UseDecodeContextParallel(DecodeContextParallel mode, const DecodeContextParallelQuery& q);

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_CLUSTER_KV_SIZING_H_
