// Fuzz target: the engine steps a worker receives (the messages of its
// internal Steps stream), on a worker serving the tiny fixture model on the
// CPU with a cache of 16 blocks of 16 tokens. The input is a serialized
// internal.v1.StepRequest, run through WorkerService::Step -- what Steps runs
// for each message -- then a step releasing every sequence it named returns
// the worker to where it was, so that an input's outcome does not depend on
// the inputs before it. Called directly, not through an in-process gRPC
// server: gRPC's thread pool starts threads while LeakSanitizer looks for
// leaks, which it reported (once in CI) as a leak no input repeats.
#include <cstdint>
#include <cstdlib>
#include <iostream>

#include <grpcpp/grpcpp.h>

#include "kernels/ops.h"
#include "proto/worker.pb.h"
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
  }

  InMemoryRendezvousStore store;
  WorkerService service;
};

}  // namespace
}  // namespace mlaserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto* fixture = new mlaserve::Fixture();
  mlaserve::internal::v1::StepRequest step;
  if (!step.ParseFromArray(data, static_cast<int>(size))) return 0;
  mlaserve::internal::v1::StepResponse response;
  fixture->service.Step(step, &response).IgnoreError();
  mlaserve::internal::v1::StepRequest release;
  for (const auto& s : step.sequences()) release.add_released(s.request_id());
  mlaserve::internal::v1::StepResponse released_response;
  if (const absl::Status released = fixture->service.Step(release, &released_response); !released.ok()) {
    std::cerr << "step_fuzz: releasing failed: " << released << "\n";
    __builtin_trap();  // releasing must always work
  }
  return 0;
}
