// The serving engine as front ends see it: submit a tokenized request, get
// updates through a callback, cancel it. The coordinator's ServingEngine
// implements it over worker groups; tests substitute a fake.
#ifndef MLASERVE_COORDINATOR_SERVING_ENGINE_H_
#define MLASERVE_COORDINATOR_SERVING_ENGINE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "coordinator/serving/request.h"
#include "tokenizer/tokenizer.h"

namespace mlaserve {

// One engine group's KV cache: each attention replica holds its own.
struct GroupKvCapacity {
  int32_t group_id = 0;
  int replicas = 1;
  int64_t tokens_per_replica = 0;
  int64_t tokens() const { return replicas * tokens_per_replica; }
};

struct EngineHealth {
  bool serving = false;  // at least one group can take requests
  int32_t live_workers = 0;
  int32_t total_workers = 0;
  int32_t serving_groups = 0;  // groups that can take requests
  int32_t planned_groups = 0;  // groups the cluster is planned to have (0: not said)
  bool shutting_down = false;  // new requests are refused while those in flight finish
};

class Engine {
 public:
  virtual ~Engine() = default;

  // Queues a request and returns its id. Errors, with nothing queued (front
  // ends count them as rejected requests):
  // InvalidArgument (ids outside the vocabulary, prompt plus max_tokens
  // beyond the context, bad sampling values), ResourceExhausted (queue full),
  // Unavailable (no live worker group).
  virtual absl::StatusOr<int64_t> Submit(GenerateInput input, UpdateCallback on_update) = 0;
  // Stops a request and frees its blocks; its callback gets a final kAbort
  // update unless it already finished. Unknown ids are ignored.
  virtual void Cancel(int64_t request_id) = 0;

  virtual const Tokenizer& tokenizer() const = 0;
  virtual const ModelConfig& model_config() const = 0;
  virtual const std::string& model_name() const = 0;  // as /v1/models lists it
  virtual int64_t max_context() const = 0;
  // The KV cache of every group, in the order groups were added.
  virtual std::vector<GroupKvCapacity> KvCapacity() const = 0;
  virtual EngineHealth Health() const = 0;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_ENGINE_H_
