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

#include "gtest/gtest.h"

#include "nlohmann/json.hpp"
#include "tests/local_cluster.h"
#include "worker/kv_cache.h"
#include "worker/model.h"

namespace mlaserve {

// Relative to Bazel's runfiles, or to the repository root where a device bundle runs.
inline constexpr char kTinyModelDir[] = "tests/testdata/tiny-deepseek-v3";

// How far a served logprob may be from the oracle's float32 log_softmax. A CPU
// worker computes what the oracle computes, summed in another order.
inline constexpr double kCpuLogprobTolerance = 1e-4;
// A CUDA worker keeps activations in bf16 (8 significant bits, up to 0.4% off
// per rounding), which moves the tiny model's logprobs by hundredths.
inline constexpr double kBf16LogprobTolerance = 0.1;
// The tolerance for the workers' TestDevice().
double LogprobTolerance();
// How close the oracle's two best tokens must be for a served greedy
// continuation to part from the oracle's there: exact ties only on a CPU;
// on a GPU, gaps bf16 rounding can close (the logprob tolerance).
double GreedyTieTolerance();

// Greedy continuation computed in-process: what the cluster must return.
class Oracle {
 public:
  Oracle();
  std::vector<int32_t> Greedy(const std::vector<int32_t>& prompt, int max_tokens);
  // Whether `served` is the greedy continuation of `prompt`: token for token,
  // except that at a near-tie (the oracle's token beats the served one by at
  // most GreedyTieTolerance() in log-probability) the two may part for good.
  ::testing::AssertionResult IsGreedy(const std::vector<int32_t>& prompt, const std::vector<int32_t>& served);
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
