#include "coordinator/kv_transfer.h"

#include <future>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"

namespace mlaserve {

absl::StatusOr<int64_t> KvTransfer::Pull(const WorkerInfo& into, const std::string& from_address,
                                         const std::vector<int32_t>& from_blocks,
                                         const std::vector<int32_t>& into_blocks) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout_ + absl::Seconds(5)));
  internal::v1::PullBlocksRequest request;
  request.set_source_address(from_address);
  request.mutable_source_blocks()->Add(from_blocks.begin(), from_blocks.end());
  request.mutable_dest_blocks()->Add(into_blocks.begin(), into_blocks.end());
  request.set_timeout_s(absl::ToDoubleSeconds(timeout_));
  internal::v1::PullBlocksResponse response;
  absl::Status status = FromGrpcStatus(into.stub->PullBlocks(&context, request, &response));
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("KV transfer into worker ", into.id, " from ", from_address, ": ",
                                               status.message()));
  }
  return response.bytes();
}

absl::Status KvTransfer::Copy(const ReplicaBlocks& src, const ReplicaBlocks& dst) {
  if (src.blocks.size() != dst.blocks.size() || src.ranks.empty() || dst.ranks.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("KV transfer of ", src.blocks.size(), " blocks into ",
                                                   dst.blocks.size()));
  }
  if (src.blocks.empty()) return absl::OkStatus();
  const absl::Time start = absl::Now();
  absl::StatusOr<int64_t> bytes = Pull(dst.ranks[0], src.ranks[0].address, src.blocks, dst.blocks);
  std::vector<std::future<absl::StatusOr<int64_t>>> fan_out;
  if (bytes.ok()) {
    for (size_t r = 1; r < dst.ranks.size(); ++r) {
      fan_out.push_back(std::async(std::launch::async, [&, r] {
        return Pull(dst.ranks[r], dst.ranks[0].address, dst.blocks, dst.blocks);
      }));
    }
  }
  absl::Status status = bytes.status();
  for (auto& f : fan_out) {
    absl::StatusOr<int64_t> peer = f.get();
    if (status.ok()) status = peer.status();
  }
  if (!status.ok()) {
    metrics_.CountKvTransferFailure();
    return status;
  }
  metrics_.ObserveKvTransfer(static_cast<double>(*bytes), static_cast<double>(src.blocks.size()),
                             absl::ToDoubleSeconds(absl::Now() - start));
  return absl::OkStatus();
}

}  // namespace mlaserve
