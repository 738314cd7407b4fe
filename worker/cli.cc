// mlaserve command-line tool: run the engine on one machine without a cluster.
//
//   cli score    --model DIR --ids 3,17,42 --out logits.safetensors
//   cli generate --model DIR (--prompt "text" | --ids 1,2,3) --max_tokens N
//   cli tokenize --model DIR --text "..."
//
// Relative paths are taken from the directory `bazel run` was called in.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "common/user_path.h"
#include "tokenizer/prompt.h"
#include "tokenizer/tokenizer.h"
#include "worker/load_report.h"
#include "worker/model.h"
#include "worker/model_runner.h"

ABSL_FLAG(std::string, model, "", "model directory (config.json, safetensors, tokenizer.json)");
ABSL_FLAG(std::string, ids, "", "comma-separated token ids");
ABSL_FLAG(std::string, prompt, "", "prompt text (generate)");
ABSL_FLAG(std::string, text, "", "text to tokenize (tokenize)");
ABSL_FLAG(std::string, out, "", "output safetensors file (score)");
ABSL_FLAG(int64_t, max_tokens, 16, "tokens to generate");
ABSL_FLAG(bool, add_bos, true, "prepend the model's BOS token to a text prompt, as its tokenizer does");
ABSL_FLAG(bool, stop_at_eos, true, "stop generating at the model's EOS token");
ABSL_FLAG(int64_t, block_size, 64, "tokens per KV cache block");
ABSL_FLAG(std::string, kv_cache_dtype, "auto", "auto or bf16 (the latents as computed), fp8 (kernels/latent_row.h)");
ABSL_FLAG(int64_t, prefill_chunk, 0, "prefill chunk in tokens (0: whole prompt)");
ABSL_FLAG(bool, random_weights, false, "seeded random weights from --model's config.json instead of a checkpoint");
ABSL_FLAG(uint64_t, random_seed, 0, "seed of --random_weights");
ABSL_FLAG(std::string, weights_dtype, "auto",
          "auto (as stored), bf16 (FP8 checkpoints dequantized) or fp8 (projections quantized at load)");

namespace mlaserve {
namespace {

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text, int64_t vocab_size) {
  std::vector<int32_t> ids;
  for (absl::string_view piece : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int64_t id;
    if (!absl::SimpleAtoi(piece, &id)) return absl::InvalidArgumentError(absl::StrCat("--ids: '", piece, "' is not an integer"));
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("--ids: token id ", id, " outside the vocabulary [0, ", vocab_size, ")"));
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  if (ids.empty()) return absl::InvalidArgumentError("--ids: no token ids given");
  return ids;
}

absl::StatusOr<std::string> ModelDir() {
  std::string dir = ResolveUserPath(absl::GetFlag(FLAGS_model));
  if (dir.empty()) return absl::InvalidArgumentError("--model is required");
  if (!std::filesystem::is_directory(dir)) return absl::NotFoundError(absl::StrCat("--model: no directory ", dir));
  return dir;
}

absl::StatusOr<std::unique_ptr<Model>> LoadWithProgress(const std::string& dir, Ops& ops) {
  ASSIGN_OR_RETURN(const WeightsDtype dtype, ParseWeightsDtype(absl::GetFlag(FLAGS_weights_dtype)));
  if (absl::GetFlag(FLAGS_random_weights)) {
    return Model::LoadRandom(dir, ops, ModelShard{}, absl::GetFlag(FLAGS_random_seed), dtype);
  }
  return Model::Load(dir, ops, ModelShard{}, dtype, LoadReporter("cli"));
}

absl::StatusOr<KvCache> CacheFor(Ops& ops, const ModelConfig& config, int64_t tokens) {
  const int64_t block_size = absl::GetFlag(FLAGS_block_size);
  if (block_size <= 0) return absl::InvalidArgumentError("--block_size must be positive");
  ASSIGN_OR_RETURN(const KvCacheDtype dtype, ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype)));
  return KvCache::Create(ops, config, BlocksFor(tokens, block_size) + 1, block_size, dtype);
}

absl::Status Tokenize() {
  ASSIGN_OR_RETURN(std::string dir, ModelDir());
  ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromFile(dir + "/tokenizer.json"));
  std::vector<int32_t> ids = tokenizer->Encode(absl::GetFlag(FLAGS_text));
  std::cout << absl::StrJoin(ids, " ") << "\n";
  return absl::OkStatus();
}

absl::Status Score() {
  ASSIGN_OR_RETURN(std::string dir, ModelDir());
  const std::string out = ResolveUserPath(absl::GetFlag(FLAGS_out));
  if (out.empty()) return absl::InvalidArgumentError("--out is required");
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir + "/config.json"));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIds(absl::GetFlag(FLAGS_ids), config.vocab_size));
  std::unique_ptr<Ops> ops = NewCpuOps();
  ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadWithProgress(dir, *ops));
  ASSIGN_OR_RETURN(KvCache cache, CacheFor(*ops, config, ids.size()));
  ModelRunner runner(*model, cache, {.prefill_chunk_tokens = absl::GetFlag(FLAGS_prefill_chunk)});
  ASSIGN_OR_RETURN(std::vector<float> logits, runner.Score(ids));
  RETURN_IF_ERROR(WriteSafetensors(
      out, {F32Tensor("logits", {static_cast<int64_t>(ids.size()), config.vocab_size}, logits)}));
  std::cerr << "wrote logits [" << ids.size() << ", " << config.vocab_size << "] to " << out << "\n";
  return absl::OkStatus();
}

absl::Status Generate() {
  ASSIGN_OR_RETURN(std::string dir, ModelDir());
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir + "/config.json"));
  ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromFile(dir + "/tokenizer.json"));
  const int64_t max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (max_tokens < 0) return absl::InvalidArgumentError("--max_tokens must not be negative");
  std::vector<int32_t> prompt;
  if (!absl::GetFlag(FLAGS_ids).empty()) {
    ASSIGN_OR_RETURN(prompt, ParseIds(absl::GetFlag(FLAGS_ids), config.vocab_size));
  } else {
    const std::string text = absl::GetFlag(FLAGS_prompt);
    prompt = absl::GetFlag(FLAGS_add_bos) ? EncodeTextPrompt(*tokenizer, config, text) : tokenizer->Encode(text);
    if (prompt.empty()) return absl::InvalidArgumentError("give --prompt or --ids");
  }
  if (static_cast<int64_t>(prompt.size()) + max_tokens > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", prompt.size(), " tokens plus ", max_tokens,
                                                   " new ones exceeds the context of ", config.max_position_embeddings));
  }
  std::unique_ptr<Ops> ops = NewCpuOps();
  ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadWithProgress(dir, *ops));
  ASSIGN_OR_RETURN(KvCache cache, CacheFor(*ops, config, prompt.size() + max_tokens));
  ModelRunner runner(*model, cache, {.prefill_chunk_tokens = absl::GetFlag(FLAGS_prefill_chunk)});
  std::vector<int32_t> stop;
  if (absl::GetFlag(FLAGS_stop_at_eos)) stop.assign(config.eos_token_ids.begin(), config.eos_token_ids.end());
  ASSIGN_OR_RETURN(std::vector<int32_t> out, runner.GenerateGreedy(prompt, max_tokens, stop));
  std::cerr << "ids: " << absl::StrJoin(out, " ") << "\n";
  std::cout << tokenizer->Decode(out) << "\n";
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("mlaserve CLI: score | generate | tokenize  --model DIR ...");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::cerr << "usage: cli score|generate|tokenize --model DIR [flags]; see --help\n";
    return 2;
  }
  const std::string command = args[1];
  absl::Status status;
  if (command == "score") {
    status = Score();
  } else if (command == "generate") {
    status = Generate();
  } else if (command == "tokenize") {
    status = Tokenize();
  } else {
    std::cerr << "error: unknown command '" << command << "' (expected score, generate or tokenize)\n";
    return 2;
  }
  if (!status.ok()) {
    std::cerr << "error: " << status.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace mlaserve

int main(int argc, char** argv) { return mlaserve::Main(argc, argv); }
