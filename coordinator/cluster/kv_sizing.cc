#include "coordinator/cluster/kv_sizing.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "coordinator/cluster/shard_planner.h"

namespace mlaserve {
namespace {

int64_t AllowedBytes(const RankMemoryReport& rank, double utilization) {
  return static_cast<int64_t>(std::floor(static_cast<double>(rank.capacity_bytes) * utilization)) / rank.sharers;
}

}  // namespace

std::string KvSizing::ToString() const {
  switch (source) {
    case KvSource::kExplicit:
      return "--kv_blocks";
    case KvSource::kDefault:
      return "the default for workers that measure no GPU memory";
    case KvSource::kMemory:
      return absl::StrCat("GPU memory: worker ", limiting_worker, " has the least room, ", GiB(limiting_room_bytes), " GiB");
  }
  return "";
}

int64_t KvRoomBytes(const RankMemoryReport& rank, double utilization) {
  return std::min(AllowedBytes(rank, utilization) - rank.used_bytes, rank.free_bytes / rank.sharers);
}

absl::StatusOr<KvSizing> SizeKvPool(absl::Span<const RankMemoryReport> ranks, const KvSizingOptions& options) {
  if (options.kv_blocks > 0) return KvSizing{.num_blocks = options.kv_blocks, .source = KvSource::kExplicit};
  if (!(options.gpu_memory_utilization > 0 && options.gpu_memory_utilization <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--gpu_memory_utilization must be in (0, 1], not ", options.gpu_memory_utilization));
  }
  if (options.bytes_per_block <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV blocks of ", options.bytes_per_block, " bytes"));
  }
  const bool measured = !ranks.empty() && std::all_of(ranks.begin(), ranks.end(), [](const RankMemoryReport& r) {
    return r.capacity_bytes > 0;
  });
  if (!measured) return KvSizing{.num_blocks = options.default_blocks, .source = KvSource::kDefault};
  KvSizing sizing{.source = KvSource::kMemory};
  for (const RankMemoryReport& rank : ranks) {
    const int64_t room = KvRoomBytes(rank, options.gpu_memory_utilization);
    if (sizing.limiting_worker < 0 || room < sizing.limiting_room_bytes) {
      sizing.limiting_worker = rank.worker_id;
      sizing.limiting_room_bytes = room;
    }
    if (room >= options.bytes_per_block) continue;
    const std::string share = rank.sharers > 1 ? absl::StrCat(" / ", rank.sharers, " workers on its GPU") : "";
    return absl::ResourceExhaustedError(absl::StrCat(
        "worker ", rank.worker_id, " has no memory left for the KV cache: it may use ", options.gpu_memory_utilization,
        " x ", GiB(rank.capacity_bytes), " GiB", share, " = ", GiB(AllowedBytes(rank, options.gpu_memory_utilization)),
        " GiB and holds ", GiB(rank.used_bytes), " GiB (weights, activations, buffers) with ", GiB(rank.free_bytes),
        " GiB free on its GPU; a KV block takes ", options.bytes_per_block,
        " bytes. Raise --gpu_memory_utilization, spread the model over more GPUs or keep FP8 weights in FP8"));
  }
  sizing.num_blocks = sizing.limiting_room_bytes / options.bytes_per_block;
  return sizing;
}

absl::StatusOr<DecodeContextParallel> ParseDecodeContextParallel(absl::string_view name) {
  if (name == "auto") return DecodeContextParallel::kAuto;
  if (name == "on") return DecodeContextParallel::kOn;
  if (name == "off") return DecodeContextParallel::kOff;
  return absl::InvalidArgumentError(absl::StrCat("--decode_context_parallel must be auto, on or off, not \"", name, "\""));
}

absl::StatusOr<bool> UseDecodeContextParallel(DecodeContextParallel mode, const DecodeContextParallelQuery& q) {
  if (mode == DecodeContextParallel::kOff) return false;
  std::vector<std::string> lacks;
  if (q.tp < 2) lacks.push_back(absl::StrCat("attention tensor parallelism (tp is ", q.tp, ")"));
  if (!q.attends_in_parts) lacks.push_back("workers that attend in parts (CPU workers; the CUDA kernels do not yet)");
  if (!q.mixed_role) lacks.push_back("a mixed-role group (prefill/decode handoffs move KV from a replica's first rank)");
  if (mode == DecodeContextParallel::kOn) {
    if (!lacks.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--decode_context_parallel=on needs ", absl::StrJoin(lacks, ", and ")));
    }
    return true;
  }
  return lacks.empty() && q.replica_tokens < q.max_context;
}

}  // namespace mlaserve
