#include "coordinator/cluster/rendezvous_service.h"

#include <memory>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/auth.h"
#include "gtest/gtest.h"
#include "worker/comm/grpc_rendezvous_store.h"

namespace mlaserve {
namespace {

// `service` on a server at a free loopback port; its address.
std::unique_ptr<grpc::Server> Serve(grpc::Service& service, std::string* address) {
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  *address = absl::StrCat("127.0.0.1:", port);
  return server;
}

// The service on an in-process server at a free port, and a store client.
class RendezvousServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = Serve(service_, &address_);
    ASSERT_NE(server_, nullptr);
    store_ = std::make_unique<GrpcRendezvousStore>(AuthorizedChannel(address_, ""));
  }

  void TearDown() override { server_->Shutdown(); }

  RendezvousService service_;
  std::string address_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<GrpcRendezvousStore> store_;
};

TEST_F(RendezvousServiceTest, SetThenGet) {
  // Values are bytes: an embedded NUL must survive.
  const std::string value("addr\0ess", 8);
  ASSERT_TRUE(store_->Set("g/0", value).ok());
  absl::StatusOr<std::string> got = store_->Get("g/0", absl::Seconds(1));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, value);
}

TEST_F(RendezvousServiceTest, GetWaitsForALaterSet) {
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(300));
    EXPECT_TRUE(store_->Set("g/late", "v").ok());
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> got = store_->Get("g/late", absl::Seconds(10));
  setter.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "v");
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST_F(RendezvousServiceTest, GetTimesOutNamingTheKey) {
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> got = store_->Get("g/never", absl::Milliseconds(300));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_NE(got.status().message().find("g/never"), absl::string_view::npos) << got.status();
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST_F(RendezvousServiceTest, SetIsWriteOnce) {
  ASSERT_TRUE(store_->Set("g/k", "a").ok());
  EXPECT_TRUE(store_->Set("g/k", "a").ok());
  EXPECT_EQ(store_->Set("g/k", "b").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*store_->Get("g/k", absl::ZeroDuration()), "a");
}

TEST_F(RendezvousServiceTest, EmptyKeyIsInvalid) {
  EXPECT_EQ(store_->Set("", "a").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Get("", absl::ZeroDuration()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RendezvousServiceTest, DeletePrefixDropsOnlyThatGroup) {
  ASSERT_TRUE(store_->Set("group1/0", "a").ok());
  ASSERT_TRUE(store_->Set("group1/1", "b").ok());
  ASSERT_TRUE(store_->Set("group10/0", "c").ok());
  ASSERT_TRUE(store_->Set("group2/0", "d").ok());
  service_.DeletePrefix("group1/");
  EXPECT_EQ(store_->Get("group1/0", absl::ZeroDuration()).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(store_->Get("group1/1", absl::ZeroDuration()).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(*store_->Get("group10/0", absl::ZeroDuration()), "c");
  EXPECT_EQ(*store_->Get("group2/0", absl::ZeroDuration()), "d");
  // A rebuilt group may reuse the prefix with new values.
  EXPECT_TRUE(store_->Set("group1/0", "new").ok());
}

TEST_F(RendezvousServiceTest, WaitIsCappedByTheServer) {
  RendezvousService capped(absl::Milliseconds(200));
  internal::v1::StoreGetRequest request;
  request.set_key("k");
  request.set_timeout_s(3600);
  internal::v1::StoreGetResponse response;
  grpc::ServerContext context;
  const absl::Time start = absl::Now();
  EXPECT_EQ(capped.Get(&context, &request, &response).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

// With a cluster secret, only callers presenting it reach the store; the
// AuthorizedChannel of the same secret does.
TEST(RendezvousAuthTest, OnlyTheClusterSecretIsAdmitted) {
  RendezvousService service(absl::Seconds(600), KeySet({"s3cret"}));
  std::string address;
  std::unique_ptr<grpc::Server> server = Serve(service, &address);
  ASSERT_NE(server, nullptr);
  for (const std::string& secret : {std::string(), std::string("wrong"), std::string("s3cre")}) {
    GrpcRendezvousStore store(AuthorizedChannel(address, secret));
    EXPECT_EQ(store.Set("g/k", "v").code(), absl::StatusCode::kUnauthenticated) << "secret '" << secret << "'";
    EXPECT_EQ(store.Get("g/k", absl::Milliseconds(10)).status().code(), absl::StatusCode::kUnauthenticated);
  }
  GrpcRendezvousStore store(AuthorizedChannel(address, "s3cret"));
  ASSERT_TRUE(store.Set("g/k", "v").ok());
  absl::StatusOr<std::string> got = store.Get("g/k", absl::Seconds(1));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "v");
  server->Shutdown();
}

}  // namespace
}  // namespace mlaserve
