#include "tests/serving_client.h"

#include "worker/model_runner.h"

namespace mlaserve {

Oracle::Oracle()
    : ops_(NewCpuOps()),
      model_(*Model::Load(kTinyModelDir, *ops_)),
      cache_(*KvCache::Create(*ops_, model_->config(), 64, 64)) {}

std::vector<int32_t> Oracle::Greedy(const std::vector<int32_t>& prompt, int max_tokens) {
  return *ModelRunner(*model_, cache_).GenerateGreedy(prompt, max_tokens);
}

std::vector<std::vector<float>> Oracle::Logits(const std::vector<int32_t>& prompt, const std::vector<int32_t>& output) {
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), output.begin(), output.end());
  const std::vector<float> scores = *ModelRunner(*model_, cache_).Score(all);
  const int64_t vocab = model_->config().vocab_size;
  std::vector<std::vector<float>> rows;
  for (size_t t = prompt.size() - 1; t < all.size(); ++t) {
    rows.emplace_back(scores.begin() + t * vocab, scores.begin() + (t + 1) * vocab);
  }
  return rows;
}

GrpcOutput GenerateGrpc(const LocalCluster& cluster, const std::vector<int32_t>& prompt, int max_tokens,
                        float temperature, std::optional<uint64_t> seed) {
  auto stub = cluster.GrpcStub();
  grpc::ClientContext context;
  v1::GenerateRequest request;
  request.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
  request.mutable_sampling()->set_max_tokens(max_tokens);
  request.mutable_sampling()->set_temperature(temperature);
  request.mutable_sampling()->set_ignore_eos(true);
  if (seed) request.mutable_sampling()->set_seed(*seed);
  auto reader = stub->Generate(&context, request);
  GrpcOutput out;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    out.ids.insert(out.ids.end(), response.token_ids().begin(), response.token_ids().end());
    out.text += response.text();
    if (!response.finish_reason().empty()) {
      out.finish_reason = response.finish_reason();
      out.usage = response.usage();
    }
  }
  out.status = reader->Finish();
  return out;
}

nlohmann::json Completion(const std::vector<int32_t>& prompt, int max_tokens) {
  return {{"model", "tiny-deepseek-v3"}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0},
          {"ignore_eos", true}};
}

std::vector<int32_t> RandomPrompt(std::mt19937& rng, int length) {
  std::vector<int32_t> ids(length);
  for (int32_t& id : ids) id = 4 + rng() % 1000;
  return ids;
}

}  // namespace mlaserve
