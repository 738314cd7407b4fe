#include "coordinator/cluster/rendezvous_service.h"

#include <algorithm>
#include <cmath>

#include <grpcpp/server_context.h>

#include "absl/strings/str_cat.h"

namespace mlaserve {
namespace {

// How often a waiting Get looks whether its caller has gone (cancelled, past
// its deadline, disconnected, or the server shutting down), so a dead worker
// does not hold a server thread for the whole wait.
constexpr absl::Duration kCancelPoll = absl::Milliseconds(200);

}  // namespace

RendezvousService::RendezvousService(absl::Duration max_wait, KeySet callers)
    : max_wait_(max_wait), callers_(std::move(callers)) {}

grpc::Status RendezvousService::Set(grpc::ServerContext* context, const internal::v1::StoreSetRequest* request,
                                    internal::v1::StoreSetResponse*) {
  if (grpc::Status denied = CheckCaller(callers_, *context); !denied.ok()) return denied;
  if (request->key().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "key is empty");
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = values_.emplace(request->key(), request->value());
  if (!inserted && it->second != request->value()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("key \"", request->key(), "\" is already set to another value"));
  }
  return grpc::Status::OK;
}

grpc::Status RendezvousService::Get(grpc::ServerContext* context, const internal::v1::StoreGetRequest* request,
                                    internal::v1::StoreGetResponse* response) {
  if (grpc::Status denied = CheckCaller(callers_, *context); !denied.ok()) return denied;
  const std::string& key = request->key();
  if (key.empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "key is empty");
  // NaN and negative waits mean "only if already set".
  const double timeout_s = std::isnan(request->timeout_s()) ? 0 : request->timeout_s();
  const absl::Duration wait = std::clamp(absl::Seconds(timeout_s), absl::ZeroDuration(), max_wait_);
  const absl::Time deadline = absl::Now() + wait;
  absl::MutexLock lock(&mu_);
  auto present = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return values_.contains(key); };
  while (!mu_.AwaitWithDeadline(absl::Condition(&present), std::min(deadline, absl::Now() + kCancelPoll))) {
    if (absl::Now() >= deadline) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          absl::StrCat("key \"", key, "\" not set within ", absl::FormatDuration(wait)));
    }
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "caller went away");
  }
  response->set_value(values_.at(key));
  return grpc::Status::OK;
}

void RendezvousService::DeletePrefix(const std::string& prefix) {
  absl::MutexLock lock(&mu_);
  auto it = values_.lower_bound(prefix);
  while (it != values_.end() && it->first.starts_with(prefix)) it = values_.erase(it);
}

}  // namespace mlaserve
