// Who may call a cluster (issue 13, part 4), on a real local cluster with a
// cluster secret and client API keys: every public route and RPC refuses a
// caller without a client key, every internal RPC (worker registration,
// rendezvous, Admin, each Worker RPC) one without the cluster secret -- a
// client key is not enough -- and the public and internal services live on
// separate ports. A coordinator told to serve a non-loopback address without
// credentials refuses to start.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "common/auth.h"
#include "gtest/gtest.h"
#include "proto/mlaserve.grpc.pb.h"
#include "proto/worker.grpc.pb.h"
#include "tests/local_cluster.h"
#include "tests/serving_client.h"

namespace mlaserve {
namespace {

constexpr char kApiKey[] = "sk-test-client-key";

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    key_file_ = new std::string(absl::StrCat("/tmp/security_test_keys_", getpid()));
    std::ofstream(*key_file_) << "sk-other\n" << kApiKey << "\n";
    auto cluster = LocalCluster::Start(kTinyModelDir, 1, {"--api_key_file=" + *key_file_});
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
    std::remove(key_file_->c_str());
    delete key_file_;
  }
  void SetUp() override { ASSERT_NE(cluster_, nullptr); }

  static std::string Internal() { return absl::StrCat("127.0.0.1:", cluster_->internal_port()); }
  static std::string Public() { return absl::StrCat("127.0.0.1:", cluster_->grpc_port()); }
  // The address of the cluster's worker, from Admin (with the secret).
  static std::string WorkerAddress() {
    grpc::ClientContext context;
    v1::ListWorkersResponse response;
    EXPECT_TRUE(cluster_->AdminStub()->ListWorkers(&context, {}, &response).ok());
    return response.workers_size() > 0 ? response.workers(0).address() : "";
  }

  static LocalCluster* cluster_;
  static std::string* key_file_;
};
LocalCluster* SecurityTest::cluster_ = nullptr;
std::string* SecurityTest::key_file_ = nullptr;

// The credentials a caller may try: none, a wrong one, and (for internal
// services) a client key instead of the secret.
std::vector<std::string> WrongCredentials() { return {"", "not-the-secret", kApiKey}; }

TEST_F(SecurityTest, HttpNeedsAClientKey) {
  httplib::Client client("127.0.0.1", cluster_->http_port());
  client.set_read_timeout(60, 0);
  const std::string body = R"({"prompt": "Hello", "max_tokens": 3, "temperature": 0})";
  for (const std::string& authorization : {std::string(), std::string("Bearer wrong"),
                                           "Bearer " + cluster_->cluster_secret()}) {
    httplib::Headers headers;
    if (!authorization.empty()) headers.emplace("Authorization", authorization);
    auto result = client.Post("/v1/completions", headers, body, "application/json");
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 401) << authorization;
    EXPECT_NE(result->body.find("\"error\""), std::string::npos);
  }
  auto ok = client.Post("/v1/completions", {{"Authorization", absl::StrCat("Bearer ", kApiKey)}}, body,
                        "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  EXPECT_EQ(client.Get("/health")->status, 200);
}

TEST_F(SecurityTest, PublicGrpcNeedsAClientKey) {
  v1::GenerateRequest request;
  request.set_text("Hello");
  request.mutable_sampling()->set_max_tokens(2);
  for (const std::string& key : WrongCredentials()) {
    if (key == kApiKey) continue;
    auto stub = v1::Mlaserve::NewStub(AuthorizedChannel(Public(), key));
    grpc::ClientContext context;
    auto reader = stub->Generate(&context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED) << "key '" << key << "'";
    grpc::ClientContext info_context;
    v1::ModelInfoResponse info;
    EXPECT_EQ(stub->ModelInfo(&info_context, {}, &info).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  auto stub = v1::Mlaserve::NewStub(AuthorizedChannel(Public(), kApiKey));
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, request);
  v1::GenerateResponse response;
  int responses = 0;
  while (reader->Read(&response)) ++responses;
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_GT(responses, 0);
}

TEST_F(SecurityTest, InternalServicesNeedTheClusterSecret) {
  for (const std::string& credential : WrongCredentials()) {
    auto channel = AuthorizedChannel(Internal(), credential);
    // A rogue worker registering.
    grpc::ClientContext register_context;
    internal::v1::RegisterRequest rogue;
    rogue.set_address("127.0.0.1:1");
    internal::v1::RegisterResponse registered;
    EXPECT_EQ(internal::v1::Coordinator::NewStub(channel)->Register(&register_context, rogue, &registered).error_code(),
              grpc::StatusCode::UNAUTHENTICATED)
        << "credential '" << credential << "'";
    grpc::ClientContext heartbeat_context;
    internal::v1::HeartbeatResponse beat;
    EXPECT_EQ(internal::v1::Coordinator::NewStub(channel)->Heartbeat(&heartbeat_context, {}, &beat).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    // The rendezvous store, read and written.
    auto store = internal::v1::Rendezvous::NewStub(channel);
    grpc::ClientContext get_context;
    internal::v1::StoreGetRequest get;
    get.set_key("group-0/nccl");
    internal::v1::StoreGetResponse got;
    EXPECT_EQ(store->Get(&get_context, get, &got).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    grpc::ClientContext set_context;
    internal::v1::StoreSetRequest set;
    set.set_key("group-0/evil");
    internal::v1::StoreSetResponse stored;
    EXPECT_EQ(store->Set(&set_context, set, &stored).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    // Admin: listing pids, draining workers.
    auto admin = v1::Admin::NewStub(channel);
    grpc::ClientContext list_context;
    v1::ListWorkersResponse listed;
    EXPECT_EQ(admin->ListWorkers(&list_context, {}, &listed).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    grpc::ClientContext drain_context;
    v1::DrainWorkerRequest drain;
    v1::DrainWorkerResponse drained;
    EXPECT_EQ(admin->DrainWorker(&drain_context, drain, &drained).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_FALSE(WorkerAddress().empty()) << "Admin answers the cluster secret";
}

TEST_F(SecurityTest, WorkerRpcsNeedTheClusterSecret) {
  const std::string address = WorkerAddress();
  ASSERT_FALSE(address.empty());
  for (const std::string& credential : WrongCredentials()) {
    auto worker = internal::v1::Worker::NewStub(AuthorizedChannel(address, credential));
    const std::string who = "credential '" + credential + "'";
    {  // Reading another user's KV.
      grpc::ClientContext context;
      internal::v1::ReadBlocksRequest request;
      request.add_blocks(0);
      auto reader = worker->ReadBlocks(&context, request);
      internal::v1::BlockChunk chunk;
      EXPECT_FALSE(reader->Read(&chunk)) << who;
      EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED) << who;
    }
    {  // Running a step (the context_len that crashed a worker once).
      grpc::ClientContext context;
      auto stream = worker->Steps(&context);
      internal::v1::StepRequest step;
      step.set_step_id(1);
      internal::v1::StepSequence* s = step.add_sequences();
      s->set_context_len(1000000000);
      s->add_new_blocks(0);
      stream->Write(step);
      stream->WritesDone();
      internal::v1::StepResponse response;
      EXPECT_FALSE(stream->Read(&response)) << who;
      EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED) << who;
    }
    grpc::ClientContext load_context;
    internal::v1::LoadShardRequest load;
    load.set_model_dir("/nonexistent");
    internal::v1::LoadShardResponse loaded;
    EXPECT_EQ(worker->LoadShard(&load_context, load, &loaded).error_code(), grpc::StatusCode::UNAUTHENTICATED) << who;
    grpc::ClientContext cache_context;
    internal::v1::CreateCacheRequest cache;
    cache.set_num_blocks(1);
    internal::v1::CreateCacheResponse created;
    EXPECT_EQ(worker->CreateCache(&cache_context, cache, &created).error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << who;
    grpc::ClientContext stats_context;
    internal::v1::GetStatsResponse stats;
    EXPECT_EQ(worker->GetStats(&stats_context, {}, &stats).error_code(), grpc::StatusCode::UNAUTHENTICATED) << who;
    grpc::ClientContext pull_context;
    internal::v1::PullBlocksRequest pull;
    pull.set_source_address(address);
    pull.add_source_blocks(0);
    pull.add_dest_blocks(1);
    internal::v1::PullBlocksResponse pulled;
    EXPECT_EQ(worker->PullBlocks(&pull_context, pull, &pulled).error_code(), grpc::StatusCode::UNAUTHENTICATED) << who;
    for (bool send : {true, false}) {
      grpc::ClientContext link_context;
      internal::v1::LinkBlocksRequest link;
      link.set_link("x");
      internal::v1::LinkBlocksResponse linked;
      const grpc::Status status = send ? worker->SendBlocks(&link_context, link, &linked)
                                       : worker->RecvBlocks(&link_context, link, &linked);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << who;
    }
  }
  // The cluster still serves after all that.
  httplib::Client client("127.0.0.1", cluster_->http_port());
  client.set_read_timeout(60, 0);
  auto ok = client.Post("/v1/completions", {{"Authorization", absl::StrCat("Bearer ", kApiKey)}},
                        R"({"prompt": "Hi", "max_tokens": 2})", "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
}

// One step on a Steps stream of `worker`; its status.
grpc::Status RunStep(internal::v1::Worker::Stub& worker, const internal::v1::StepRequest& step) {
  grpc::ClientContext context;
  auto stream = worker.Steps(&context);
  stream->Write(step);
  stream->WritesDone();
  internal::v1::StepResponse response;
  while (stream->Read(&response)) {
  }
  return stream->Finish();
}

internal::v1::StepSequence* StartSequence(internal::v1::StepRequest* step, int64_t id, std::vector<int32_t> tokens,
                                          int64_t context_len, std::vector<int32_t> blocks) {
  internal::v1::StepSequence* s = step->add_sequences();
  s->set_request_id(id);
  s->set_start(true);
  for (int32_t t : tokens) s->add_token_ids(t);
  s->set_context_len(context_len);
  for (int32_t b : blocks) s->add_new_blocks(b);
  return s;
}

// Requests that crashed a worker or dropped its model, sent with the secret
// (as a compromised peer would): refused, and the worker keeps serving.
TEST_F(SecurityTest, BadInternalRequestsAreInvalidArgumentAndChangeNothing) {
  const std::string address = WorkerAddress();
  ASSERT_FALSE(address.empty());
  auto worker = internal::v1::Worker::NewStub(AuthorizedChannel(address, cluster_->cluster_secret()));
  constexpr int64_t kId = int64_t{1} << 40;  // no id the coordinator hands out
  {
    internal::v1::StepRequest step;
    StartSequence(&step, kId, {1}, 1000000000, {0});
    const grpc::Status status = RunStep(*worker, step);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  }
  for (int32_t bad_block : {-1, 1 << 30}) {
    internal::v1::StepRequest step;
    StartSequence(&step, kId, {1}, 1, {bad_block});
    EXPECT_EQ(RunStep(*worker, step).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad_block;
  }
  {  // A good change beside a bad one (a token outside the vocabulary): neither applies.
    internal::v1::StepRequest step;
    StartSequence(&step, kId, {1, 2}, 2, {0});
    StartSequence(&step, kId + 1, {1 << 30}, 1, {1});
    EXPECT_EQ(RunStep(*worker, step).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    internal::v1::StepRequest next;
    internal::v1::StepSequence* s = next.add_sequences();
    s->set_request_id(kId);
    s->add_token_ids(3);
    s->set_context_len(3);
    const grpc::Status status = RunStep(*worker, next);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("unknown sequence"), std::string::npos) << status.error_message();
  }
  {  // The same sequence twice in one step.
    internal::v1::StepRequest step;
    StartSequence(&step, kId, {1}, 1, {0});
    StartSequence(&step, kId, {1}, 1, {0});
    EXPECT_EQ(RunStep(*worker, step).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {  // A context-parallel chunk in a group without attention replicas.
    internal::v1::StepRequest step;
    StartSequence(&step, kId, {1, 2}, 2, {0});
    internal::v1::ContextParallelChunk* chunk = step.add_context_parallel();
    chunk->set_request_id(kId);
    chunk->add_replicas(0);
    chunk->add_slice_tokens(2);
    const grpc::Status status = RunStep(*worker, step);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("context-parallel"), std::string::npos) << status.error_message();
  }
  auto load_shard = [&](const std::string& dir, int32_t rank) {
    grpc::ClientContext context;
    internal::v1::LoadShardRequest load;
    load.set_model_dir(dir);
    load.set_block_size(16);
    load.set_group_size(1);
    load.set_group_rank(rank);
    internal::v1::LoadShardResponse loaded;
    return worker->LoadShard(&context, load, &loaded).error_code();
  };
  EXPECT_EQ(load_shard("/nonexistent", 0), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(load_shard("", 0), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(load_shard(kTinyModelDir, 5), grpc::StatusCode::INVALID_ARGUMENT);
  // The worker still serves, with its model and cache.
  httplib::Client client("127.0.0.1", cluster_->http_port());
  client.set_read_timeout(60, 0);
  auto ok = client.Post("/v1/completions", {{"Authorization", absl::StrCat("Bearer ", kApiKey)}},
                        R"({"prompt": "Hi", "max_tokens": 4, "temperature": 0})", "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
}

TEST_F(SecurityTest, PublicAndInternalServicesLiveOnSeparatePorts) {
  grpc::ClientContext register_context;
  internal::v1::RegisterRequest rogue;
  rogue.set_address("127.0.0.1:1");
  internal::v1::RegisterResponse registered;
  EXPECT_EQ(internal::v1::Coordinator::NewStub(AuthorizedChannel(Public(), cluster_->cluster_secret()))
                ->Register(&register_context, rogue, &registered)
                .error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  grpc::ClientContext info_context;
  v1::ModelInfoResponse info;
  EXPECT_EQ(v1::Mlaserve::NewStub(AuthorizedChannel(Internal(), kApiKey))->ModelInfo(&info_context, {}, &info).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
}

TEST(ExposureTest, NonLoopbackWithoutCredentialsIsRefused) {
  auto cluster = LocalCluster::Start(kTinyModelDir, 1, {"--host=0.0.0.0"});
  ASSERT_FALSE(cluster.ok());
  EXPECT_NE(cluster.status().message().find("refusing to serve the public API"), std::string::npos)
      << cluster.status();
}

}  // namespace
}  // namespace mlaserve
