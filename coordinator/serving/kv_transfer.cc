#include "coordinator/serving/kv_transfer.h"

#include <future>

#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"

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

KvTransfer::Link& KvTransfer::LinkBetween(int32_t from, int32_t into) {
  absl::MutexLock lock(&mu_);
  std::unique_ptr<Link>& link = links_[{from, into}];
  if (link == nullptr) link = std::make_unique<Link>();
  return *link;
}

absl::StatusOr<int64_t> KvTransfer::OverLink(const WorkerInfo& from, const std::vector<int32_t>& from_blocks,
                                             const WorkerInfo& into, const std::vector<int32_t>& into_blocks) {
  Link& link = LinkBetween(from.id, into.id);
  absl::MutexLock lock(&link.mu);
  const bool made = link.made;
  absl::StatusOr<int64_t> bytes = OverLinkLocked(link, from, from_blocks, into, into_blocks);
  if (bytes.ok() && !made) metrics_.CountKvLinkMade("first_use");
  return bytes;
}

absl::StatusOr<int64_t> KvTransfer::OverLinkLocked(Link& link, const WorkerInfo& from,
                                                   const std::vector<int32_t>& from_blocks, const WorkerInfo& into,
                                                   const std::vector<int32_t>& into_blocks) {
  const std::string name = absl::StrCat(from.id, "-", into.id, "-g", link.generation);
  // Each end's call; one that fails cancels the other's, which would
  // otherwise wait the whole timeout for a peer that is gone (a dead worker
  // never joins the link's rendezvous).
  grpc::ClientContext send_context, recv_context;
  auto call = [&](const WorkerInfo& worker, const std::vector<int32_t>& blocks, bool send) -> absl::StatusOr<int64_t> {
    grpc::ClientContext& context = send ? send_context : recv_context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout_ + absl::Seconds(5)));
    internal::v1::LinkBlocksRequest request;
    request.set_link(name);
    request.mutable_blocks()->Add(blocks.begin(), blocks.end());
    request.set_timeout_s(absl::ToDoubleSeconds(timeout_));
    internal::v1::LinkBlocksResponse response;
    grpc::Status status = send ? worker.stub->SendBlocks(&context, request, &response)
                               : worker.stub->RecvBlocks(&context, request, &response);
    if (!status.ok()) {
      (send ? recv_context : send_context).TryCancel();
      return FromGrpcStatus(status);
    }
    return response.bytes();
  };
  auto sent = std::async(std::launch::async, [&] { return call(from, from_blocks, true); });
  absl::StatusOr<int64_t> received = call(into, into_blocks, false);
  absl::StatusOr<int64_t> sent_bytes = sent.get();
  // The end that failed first says why; the other was cancelled.
  absl::Status status = received.ok() || (absl::IsCancelled(received.status()) && !sent_bytes.ok())
                            ? sent_bytes.status()
                            : received.status();
  if (!status.ok()) {
    ++link.generation;
    link.made = false;
    return absl::UnavailableError(absl::StrCat("KV transfer from worker ", from.id, " to worker ", into.id,
                                               " over their link: ", status.message()));
  }
  link.made = true;
  return *received;
}

absl::StatusOr<bool> KvTransfer::Connect(const WorkerInfo& from, const WorkerInfo& into) {
  if (!UsesLink(from, into, links_mode_)) return false;
  Link& link = LinkBetween(from.id, into.id);
  absl::MutexLock lock(&link.mu);
  if (link.made) return false;
  RETURN_IF_ERROR(OverLinkLocked(link, from, {}, into, {}).status());
  metrics_.CountKvLinkMade("start");
  return true;
}

absl::StatusOr<KvLinks> ParseKvLinks(absl::string_view name) {
  if (name == "gpus") return KvLinks::kGpus;
  if (name == "all") return KvLinks::kAll;
  return absl::InvalidArgumentError(absl::StrCat("--kv_links must be gpus or all, not \"", name, "\""));
}

bool UsesLink(const WorkerInfo& from, const WorkerInfo& into, KvLinks links) {
  const bool gpus = absl::StartsWith(from.device, "cuda") && absl::StartsWith(into.device, "cuda");
  if (gpus) return from.gpu_uuid.empty() || from.gpu_uuid != into.gpu_uuid;
  const bool cpus = !absl::StartsWith(from.device, "cuda") && !absl::StartsWith(into.device, "cuda");
  return cpus && links == KvLinks::kAll;
}

absl::StatusOr<int64_t> KvTransfer::CopyBetween(const WorkerInfo& from, const std::vector<int32_t>& from_blocks,
                                                const WorkerInfo& into, const std::vector<int32_t>& into_blocks) {
  if (UsesLink(from, into, links_mode_)) return OverLink(from, from_blocks, into, into_blocks);
  return Pull(into, from.address, from_blocks, into_blocks);
}

absl::Status KvTransfer::Copy(const ReplicaBlocks& src, const ReplicaBlocks& dst) {
  if (src.blocks.size() != dst.blocks.size() || src.ranks.empty() || dst.ranks.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("KV transfer of ", src.blocks.size(), " blocks into ",
                                                   dst.blocks.size()));
  }
  if (src.blocks.empty()) return absl::OkStatus();
  const absl::Time start = absl::Now();
  absl::StatusOr<int64_t> bytes = CopyBetween(src.ranks[0], src.blocks, dst.ranks[0], dst.blocks);
  std::vector<std::future<absl::StatusOr<int64_t>>> fan_out;
  if (bytes.ok()) {
    for (size_t r = 1; r < dst.ranks.size(); ++r) {
      fan_out.push_back(std::async(std::launch::async, [&, r] {
        return CopyBetween(dst.ranks[0], dst.blocks, dst.ranks[r], dst.blocks);
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
