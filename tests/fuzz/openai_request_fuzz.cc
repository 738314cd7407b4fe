// Fuzz target: an HTTP request body as the OpenAI front end reads it -- the
// JSON, then a completion, a chat completion and a tokenize request over the
// fixture's tokenizer (chat template, logprobs, stop strings, sampling
// values). The first byte picks the route so that one corpus serves all.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "coordinator/api/openai_protocol.h"
#include "coordinator/serving/engine.h"
#include "tokenizer/tokenizer.h"

namespace mlaserve {
namespace {

// What the parsers read of an engine; nothing is ever submitted.
class ParsingEngine final : public Engine {
 public:
  ParsingEngine() {
    auto tokenizer = Tokenizer::FromFile("tests/testdata/tiny-deepseek-v3/tokenizer.json");
    auto config = LoadModelConfig("tests/testdata/tiny-deepseek-v3/config.json");
    if (!tokenizer.ok() || !config.ok()) std::abort();
    tokenizer_ = *std::move(tokenizer);
    config_ = *std::move(config);
  }
  absl::StatusOr<int64_t> Submit(GenerateInput, UpdateCallback) override { return absl::UnimplementedError(""); }
  void Cancel(int64_t) override {}
  const Tokenizer& tokenizer() const override { return *tokenizer_; }
  const ModelConfig& model_config() const override { return config_; }
  const std::string& model_name() const override { return name_; }
  int64_t max_context() const override { return 4096; }
  std::vector<GroupKvCapacity> KvCapacity() const override { return {}; }
  EngineHealth Health() const override { return {}; }

 private:
  std::unique_ptr<Tokenizer> tokenizer_;
  ModelConfig config_;
  std::string name_ = "tiny-deepseek-v3";
};

}  // namespace
}  // namespace mlaserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto* engine = new mlaserve::ParsingEngine();
  if (size == 0) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  absl::StatusOr<nlohmann::json> parsed = mlaserve::ParseBody(body);
  if (!parsed.ok()) return 0;
  switch (data[0] % 3) {
    case 0:
      mlaserve::ParseGenerateRequest(mlaserve::ApiKind::kCompletion, *parsed, *engine).IgnoreError();
      break;
    case 1:
      mlaserve::ParseGenerateRequest(mlaserve::ApiKind::kChat, *parsed, *engine).IgnoreError();
      break;
    default:
      mlaserve::ParseTokenizeRequest(*parsed, *engine).IgnoreError();
      break;
  }
  return 0;
}
