#include "coordinator/cluster/worker_registry.h"

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace mlaserve {
namespace {

internal::v1::RegisterResponse Register(WorkerRegistry& registry, const std::string& address) {
  grpc::ServerContext context;
  internal::v1::RegisterRequest request;
  request.set_address(address);
  internal::v1::RegisterResponse response;
  EXPECT_TRUE(registry.Register(&context, &request, &response).ok());
  return response;
}

bool Known(WorkerRegistry& registry, int32_t worker_id, uint64_t incarnation) {
  grpc::ServerContext context;
  internal::v1::HeartbeatRequest request;
  request.set_worker_id(worker_id);
  request.set_incarnation(incarnation);
  internal::v1::HeartbeatResponse response;
  EXPECT_TRUE(registry.Heartbeat(&context, &request, &response).ok());
  return response.known();
}

// A coordinator that restarted numbers workers from 0 again: a worker still
// heartbeating under the old coordinator's id must hear that it is unknown,
// even when the new one gave that id to another worker, and must not drain it.
TEST(WorkerRegistryTest, AnIdGivenAgainDoesNotTakeOneWorkerForAnother) {
  WorkerRegistry before(absl::Seconds(60), KeySet());
  const internal::v1::RegisterResponse old = Register(before, "10.0.0.2:1");
  WorkerRegistry after(absl::Seconds(60), KeySet());
  const internal::v1::RegisterResponse other = Register(after, "10.0.0.3:1");
  ASSERT_EQ(old.worker_id(), other.worker_id());
  ASSERT_NE(old.incarnation(), other.incarnation());
  EXPECT_TRUE(Known(after, other.worker_id(), other.incarnation()));
  EXPECT_FALSE(Known(after, old.worker_id(), old.incarnation()));
  int drained = -1;
  after.OnDrain([&drained](int32_t id) {
    drained = id;
    return absl::OkStatus();
  });
  grpc::ServerContext context;
  internal::v1::DrainRequest drain;
  drain.set_worker_id(old.worker_id());
  drain.set_incarnation(old.incarnation());
  internal::v1::DrainResponse response;
  EXPECT_EQ(after.Drain(&context, &drain, &response).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(drained, -1);
  drain.set_incarnation(other.incarnation());
  grpc::ServerContext again;
  EXPECT_TRUE(after.Drain(&again, &drain, &response).ok());
  EXPECT_EQ(drained, other.worker_id());
}

}  // namespace
}  // namespace mlaserve
