#include "worker/comm/grpc_rendezvous_store.h"

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"

namespace mlaserve {
namespace {

// A Set is one map insert on the coordinator; this only bounds a hung link.
constexpr absl::Duration kSetDeadline = absl::Seconds(10);
// Time for the server's reply to travel back after its wait ends.
constexpr absl::Duration kGetSlack = absl::Seconds(5);

void SetDeadline(grpc::ClientContext& context, absl::Duration timeout) {
  // An infinite timeout maps to time_point::max(), which gRPC reads as none.
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

// The RPC's status with the operation and key in front of its message.
absl::Status Annotate(const grpc::Status& status, const char* op, const std::string& key) {
  const absl::Status s = FromGrpcStatus(status);
  return absl::Status(s.code(), absl::StrCat("rendezvous ", op, "(\"", key, "\"): ", std::string(s.message())));
}

}  // namespace

GrpcRendezvousStore::GrpcRendezvousStore(std::shared_ptr<grpc::Channel> channel)
    : stub_(internal::v1::Rendezvous::NewStub(std::move(channel))) {}

absl::Status GrpcRendezvousStore::Set(const std::string& key, const std::string& value) {
  internal::v1::StoreSetRequest request;
  request.set_key(key);
  request.set_value(value);
  internal::v1::StoreSetResponse response;
  grpc::ClientContext context;
  SetDeadline(context, kSetDeadline);
  const grpc::Status status = stub_->Set(&context, request, &response);
  if (!status.ok()) return Annotate(status, "Set", key);
  return absl::OkStatus();
}

absl::StatusOr<std::string> GrpcRendezvousStore::Get(const std::string& key, absl::Duration timeout) {
  internal::v1::StoreGetRequest request;
  request.set_key(key);
  request.set_timeout_s(absl::ToDoubleSeconds(timeout));
  internal::v1::StoreGetResponse response;
  grpc::ClientContext context;
  SetDeadline(context, timeout + kGetSlack);
  const grpc::Status status = stub_->Get(&context, request, &response);
  if (!status.ok()) return Annotate(status, "Get", key);
  return std::move(*response.mutable_value());
}

}  // namespace mlaserve
