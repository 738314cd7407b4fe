// Fuzz target: the engine steps a worker receives (the internal Steps RPC),
// on a worker serving the tiny fixture model on the CPU with a cache of 16
// blocks of 16 tokens. The input is a serialized internal.v1.StepRequest; each
// runs on a fresh Steps stream of an in-process server, then a step releasing
// every sequence it named returns the worker to where it was, so that an
// input's outcome does not depend on the inputs before it.
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "kernels/ops.h"
#include "proto/worker.grpc.pb.h"
#include "worker/comm/rendezvous_store.h"
#include "worker/worker_service.h"

namespace mlaserve {
namespace {

struct Fixture {
  Fixture() : service(NewCpuOps(), store, nullptr) {
    grpc::ServerContext load_context, cache_context;
    internal::v1::LoadShardRequest load;
    load.set_model_dir("tests/testdata/tiny-deepseek-v3");
    load.set_block_size(16);
    load.set_group_size(1);
    internal::v1::LoadShardResponse loaded;
    internal::v1::CreateCacheRequest cache;
    cache.set_num_blocks(16);
    internal::v1::CreateCacheResponse created;
    if (!service.LoadShard(&load_context, &load, &loaded).ok() ||
        !service.CreateCache(&cache_context, &cache, &created).ok()) {
      std::cerr << "step_fuzz: the fixture model did not load\n";
      std::abort();
    }
    grpc::ServerBuilder builder;
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    stub = internal::v1::Worker::NewStub(server->InProcessChannel(grpc::ChannelArguments()));
  }
  grpc::Status Run(const internal::v1::StepRequest& step) {
    grpc::ClientContext context;
    auto stream = stub->Steps(&context);
    stream->Write(step);
    stream->WritesDone();
    internal::v1::StepResponse response;
    while (stream->Read(&response)) {
    }
    return stream->Finish();
  }

  InMemoryRendezvousStore store;
  WorkerService service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<internal::v1::Worker::Stub> stub;
};

}  // namespace
}  // namespace mlaserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto* fixture = new mlaserve::Fixture();
  mlaserve::internal::v1::StepRequest step;
  if (!step.ParseFromArray(data, static_cast<int>(size))) return 0;
  fixture->Run(step).error_code();
  mlaserve::internal::v1::StepRequest release;
  for (const auto& s : step.sequences()) release.add_released(s.request_id());
  if (const grpc::Status released = fixture->Run(release); !released.ok()) {
    std::cerr << "step_fuzz: releasing failed: " << released.error_message() << "\n";
    __builtin_trap();  // releasing must always work
  }
  return 0;
}
