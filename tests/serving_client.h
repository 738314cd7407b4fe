// What serving tests share: the in-process oracle (the model on one CPU
// rank, no serving stack) and small clients of the public APIs.
#ifndef MLASERVE_TESTS_SERVING_CLIENT_H_
#define MLASERVE_TESTS_SERVING_CLIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "nlohmann/json.hpp"
#include "tests/local_cluster.h"
#include "worker/kv_cache.h"
#include "worker/model.h"

namespace mlaserve {

inline constexpr char kTinyModelDir[] = "tests/testdata/tiny-deepseek-v3";

// Greedy continuation computed in-process: what the cluster must return.
class Oracle {
 public:
  Oracle();
  std::vector<int32_t> Greedy(const std::vector<int32_t>& prompt, int max_tokens);
  // log_softmax, in double, of the logits at every position of `ids`: a row per position.
  std::vector<std::vector<double>> LogSoftmax(const std::vector<int32_t>& ids);

 private:
  std::unique_ptr<Ops> ops_;
  std::unique_ptr<Model> model_;
  KvCache cache_;
};

struct GrpcOutput {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::string text;
  v1::Usage usage;
  std::string finish_reason;
  std::vector<v1::TokenLogprobs> logprobs;  // one per token when asked for
};

// `logprobs` >= 0 asks for each token's logprob and the top `logprobs` alternatives.
GrpcOutput GenerateGrpc(const LocalCluster& cluster, const std::vector<int32_t>& prompt, int max_tokens,
                        float temperature = 0, std::optional<uint64_t> seed = std::nullopt, int logprobs = -1);

// A greedy /v1/completions body that ignores EOS.
nlohmann::json Completion(const std::vector<int32_t>& prompt, int max_tokens);

std::vector<int32_t> RandomPrompt(std::mt19937& rng, int length);

// After a worker died: new requests are served, /health says serving with
// `live_workers`, and no KV block stays referenced (gtest expectations).
void ExpectStillServing(const LocalCluster& cluster, int live_workers);

}  // namespace mlaserve

#endif  // MLASERVE_TESTS_SERVING_CLIENT_H_
