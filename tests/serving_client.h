// What serving tests share: the in-process oracle (the model on one CPU
// rank, no serving stack) and small clients of the public APIs.
#ifndef MLASERVE_TESTS_SERVING_CLIENT_H_
#define MLASERVE_TESTS_SERVING_CLIENT_H_

#include <cstdint>
#include <functional>
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

// Relative to Bazel's runfiles, or to the repository root where a device bundle runs.
inline constexpr char kTinyModelDir[] = "tests/testdata/tiny-deepseek-v3";

// How far a served logprob may be from the oracle's float32 log_softmax. A CPU
// worker computes what the oracle computes, summed in another order.
inline constexpr double kCpuLogprobTolerance = 1e-4;
// A CUDA worker and its bf16-storage oracle round the same values in bf16 but
// sum in other orders; one rounding that falls the other way moves the tiny
// model's logprobs by up to hundredths.
inline constexpr double kBf16LogprobTolerance = 0.1;
// The tolerance for the workers' TestDevice().
double LogprobTolerance();
// Whether served greedy tokens of arbitrary prompts must equal the oracle's:
// on a CPU worker, yes. A GPU worker's bf16 roundings, summed in another
// order than any CPU reference's, flip an expert choice or an argmax near-tie
// now and then, after which the continuations part (cuda_ops_test measures
// how far the logits move). There the served tokens are checked against the
// fixture's transformers tokens, and against the GPU's own runs alone,
// batched, preempted and cached, which must agree bit for bit.
bool GreedyMatchesOracle();

// The model computed in-process: what the cluster must return. For a GPU
// worker the CPU reference stores activations in bf16 as the GPU does
// (kernels/cpu/bf16_storage_ops.h).
class Oracle {
 public:
  // Over a cache of `kv_dtype`, as workers given --kv_cache_dtype keep.
  explicit Oracle(KvCacheDtype kv_dtype = KvCacheDtype::kStorage);
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

// A greedy request over gRPC for each of `prompts` at once, `max_tokens`
// each, outputs in prompt order; `meanwhile` (if any) runs while they do.
std::vector<GrpcOutput> GenerateConcurrently(const LocalCluster& cluster, const std::vector<std::vector<int32_t>>& prompts,
                                             int max_tokens, const std::function<void()>& meanwhile = nullptr);
// `count` of them, request i's prompt {5, 6, 7, 8 + i}.
std::vector<GrpcOutput> GenerateConcurrently(const LocalCluster& cluster, int count, int max_tokens,
                                             const std::function<void()>& meanwhile = nullptr);

// Every output OK and `oracle`'s greedy continuation of its prompt, of
// `max_tokens` tokens (a gtest expectation per request).
void ExpectOraclesGreedy(Oracle& oracle, const std::vector<std::vector<int32_t>>& prompts,
                         const std::vector<GrpcOutput>& outputs, int max_tokens);

// A greedy /v1/completions body that ignores EOS.
nlohmann::json Completion(const std::vector<int32_t>& prompt, int max_tokens);

std::vector<int32_t> RandomPrompt(std::mt19937& rng, int length);

// After a worker died: new requests are served, /health says serving with
// `live_workers`, and no KV block stays referenced (gtest expectations).
void ExpectStillServing(const LocalCluster& cluster, int live_workers);

}  // namespace mlaserve

#endif  // MLASERVE_TESTS_SERVING_CLIENT_H_
