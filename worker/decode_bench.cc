// End-to-end decode throughput of a random-weights model at real shapes:
// batches of sequences with a given context already in the paged latent
// cache each decode one token per step; prints tokens/s per (batch, context)
// against the roofline, the bytes a step must read (the weights it touches
// plus the latent KV) over the bandwidth measured in the same run. With
// --prefill, also the model's prompt rate: what a served workload's model
// time is made of.
//
//   decode_bench --config tests/testdata/configs/deepseek-v2-lite.json --device cuda \
//       --batch 1,16,64,256 --context 1024,4096 [--layers 4] [--csv out.csv] [--prefill 512:8192]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/kv_cache.h"
#include "worker/model.h"
#include "worker/ops_factory.h"

ABSL_FLAG(std::string, config, "", "a DeepSeek config.json (the model's shapes)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(bool, cuda_graphs, true, "on cuda: record decode steps as CUDA graphs and replay them");
ABSL_FLAG(std::string, batch, "1,8,32", "batch sizes");
ABSL_FLAG(std::string, context, "1024", "context lengths already cached per sequence");
ABSL_FLAG(int, layers, 0, "override num_hidden_layers (0: the config's)");
ABSL_FLAG(std::string, weights_dtype, "auto", "auto (bf16: random weights), bf16 or fp8 (projections quantized)");
ABSL_FLAG(int, steps, 10, "timed decode steps per point");
ABSL_FLAG(std::string, kv_cache_dtype, "auto", "auto or bf16 (the latents as computed), fp8 (kernels/latent_row.h)");
ABSL_FLAG(int64_t, block_size, 64, "tokens per cache block");
ABSL_FLAG(std::string, csv, "", "also write the table here");
ABSL_FLAG(std::string, prefill, "",
          "also time prefill steps, as PROMPT:CHUNK (e.g. 512:8192): each step computes CHUNK / PROMPT whole prompts "
          "of PROMPT tokens from an empty cache and samples their first tokens, as a serving step with "
          "--max_batched_tokens CHUNK does");

namespace mlaserve {
namespace {

std::vector<int64_t> ParseList(const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (absl::SimpleAtoi(part, &v) && v > 0) out.push_back(v);
  }
  return out;
}

// A model directory holding the config (layers overridden), for LoadRandom.
absl::StatusOr<std::string> ModelDir(const std::string& config_path, int layers) {
  std::ifstream in(config_path);
  if (!in) return absl::NotFoundError(absl::StrCat("no config ", config_path));
  nlohmann::json config = nlohmann::json::parse(in, nullptr, false);
  if (config.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(config_path, " is not JSON"));
  if (layers > 0) config["num_hidden_layers"] = layers;
  const std::string dir = (std::filesystem::temp_directory_path() / "mlaserve_decode_bench").string();
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << config.dump();
  return dir;
}

double Seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Streaming bandwidth of this backend: a += b over 1 GiB-class tensors (reads
// two, writes one), the best of a few runs.
absl::StatusOr<double> MeasureBandwidth(Ops& ops, int64_t elements) {
  ASSIGN_OR_RETURN(Tensor a, ops.Empty(ops.storage_dtype(), {elements}));
  ASSIGN_OR_RETURN(Tensor b, ops.Empty(ops.storage_dtype(), {elements}));
  RETURN_IF_ERROR(ops.Fill(&a, 0.0f));
  RETURN_IF_ERROR(ops.Fill(&b, 1.0f));
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    RETURN_IF_ERROR(ops.Synchronize());
    const auto start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(ops.Add(&a, b));
    RETURN_IF_ERROR(ops.Synchronize());
    best = std::min(best, Seconds(std::chrono::steady_clock::now() - start));
  }
  return 3.0 * static_cast<double>(a.num_bytes()) / best;
}

// Bytes one decode step of `batch` sequences must read: every weight but the
// routed experts, the routed experts the batch is expected to touch (each
// token picks top_k of n_routed_experts), and the cached latent KV. Weights
// are `element_bytes` each, but FP8 projections (`fp8`) one byte plus a
// float scale per 128, and the cache's rows as `kv_dtype` lays them out.
double StepBytes(const ModelConfig& c, int64_t batch, int64_t context, size_t element_bytes, bool fp8,
                 KvCacheDtype kv_dtype) {
  const ShardLayout whole = *MakeShardLayout(c, ParallelPlan{}, 0);
  const double projection_bytes = fp8 ? 1.0 + 4.0 / 128 : static_cast<double>(element_bytes);
  const int64_t expert_params = 3 * c.hidden_size * c.moe_intermediate_size;
  const int64_t q_in = c.q_lora_rank > 0 ? c.q_lora_rank : c.hidden_size;
  const int64_t heads = c.num_attention_heads;
  const int64_t attention = (c.q_lora_rank > 0 ? c.q_lora_rank * c.hidden_size : 0) +
                            heads * (c.qk_nope_head_dim + c.qk_rope_head_dim) * q_in +
                            c.latent_dim() * c.hidden_size + c.hidden_size * heads * c.v_head_dim;
  int64_t moe_layers = 0;
  double projections = 0;  // projections but the routed experts
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const bool moe = c.is_moe_layer(l);
    moe_layers += moe;
    projections += attention + 3.0 * c.hidden_size *
                                   (moe ? c.moe_intermediate_size * c.n_shared_experts : c.intermediate_size);
  }
  const double all_experts = static_cast<double>(c.n_routed_experts) * expert_params * moe_layers;
  double touched = 0;
  if (c.n_routed_experts > 0) {
    const double p_untouched = std::pow(1.0 - double(c.num_experts_per_tok) / c.n_routed_experts, double(batch));
    touched = c.n_routed_experts * (1.0 - p_untouched) * expert_params * moe_layers;
  }
  // The embedding is read a row per token, not whole.
  const double embedding = static_cast<double>(c.vocab_size) * c.hidden_size;
  const double other = static_cast<double>(ShardParameterCount(c, whole)) - all_experts - embedding - projections;
  const double kv = static_cast<double>(batch) * (context + 1) * c.num_hidden_layers *
                    LatentRowBytes(c.kv_lora_rank, c.qk_rope_head_dim, element_bytes, kv_dtype);
  return other * element_bytes + kv + (projections + touched) * projection_bytes;
}

// Random latent rows in every slot of `cache`, as a computed context would
// leave them: drawn in the storage dtype, and quantized into an FP8 cache.
absl::Status FillCache(Ops& ops, const ModelConfig& c, KvCache& cache) {
  if (!IsFp8LatentCache(cache.pool())) return ops.FillRandom(&cache.pool(), 7, 0.0f, 1.0f);
  const int64_t slots = cache.num_blocks() * cache.block_size(), chunk = std::min<int64_t>(slots, 1 << 16);
  ASSIGN_OR_RETURN(Tensor c_kv, ops.Empty(ops.storage_dtype(), {chunk, c.kv_lora_rank}));
  ASSIGN_OR_RETURN(Tensor k_rope, ops.Empty(ops.storage_dtype(), {chunk, c.qk_rope_head_dim}));
  RETURN_IF_ERROR(ops.FillRandom(&c_kv, 7, 0.0f, 1.0f));
  RETURN_IF_ERROR(ops.FillRandom(&k_rope, 8, 0.0f, 1.0f));
  std::vector<int64_t> ids(chunk);
  for (int64_t first = 0; first < slots; first += chunk) {
    const int64_t n = std::min(chunk, slots - first);
    std::iota(ids.begin(), ids.begin() + n, first);
    for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
      RETURN_IF_ERROR(ops.WriteLatentCache(SliceRows(c_kv, 0, n), SliceRows(k_rope, 0, n),
                                           absl::MakeConstSpan(ids).subspan(0, n), layer, &cache.pool()));
    }
  }
  return ops.Synchronize();
}

// `batch` sequences of `tokens` tokens each, the last at position
// `context_len` - 1, with their own blocks in a fresh cache: a decode step
// (tokens 1) or a prefill step of whole prompts (context_len == tokens).
ForwardBatch MakeStep(const ModelConfig& c, int64_t batch, int64_t tokens, int64_t context_len, int64_t block_size) {
  const int64_t blocks_per_seq = BlocksFor(context_len, block_size);
  ForwardBatch step;
  step.layout.block_size = block_size;
  for (int64_t b = 0; b < batch; ++b) {
    SequenceSlice slice{.token_begin = b * tokens, .num_tokens = tokens, .context_len = context_len};
    for (int64_t k = 0; k < blocks_per_seq; ++k) slice.block_table.push_back(static_cast<int32_t>(b * blocks_per_seq + k));
    step.layout.seqs.push_back(std::move(slice));
    for (int64_t t = 0; t < tokens; ++t) step.token_ids.push_back(static_cast<int32_t>((b * 7919 + t * 104729) % c.vocab_size));
    step.logit_rows.push_back(b * tokens + tokens - 1);
  }
  return step;
}

// Seconds per serving step: the forward pass, then greedy sampling where the
// logits are; --steps timed after one warm-up.
absl::StatusOr<double> SecondsPerStep(Model& model, Ops& ops, const ForwardBatch& step, KvCache& cache) {
  const int64_t rows = static_cast<int64_t>(step.logit_rows.size());
  const std::vector<SamplerParams> greedy(rows);
  std::vector<int64_t> draw_indices(rows);
  std::vector<int32_t> sampled(rows);
  auto run = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(const Tensor logits, model.ForwardLogits(step, cache));
    return ops.SampleTokens(logits, model.config().vocab_size, greedy, draw_indices, absl::MakeSpan(sampled));
  };
  RETURN_IF_ERROR(run());  // warm-up
  const int steps = absl::GetFlag(FLAGS_steps);
  const auto start = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) RETURN_IF_ERROR(run());
  return Seconds(std::chrono::steady_clock::now() - start) / steps;
}

// --prefill PROMPT:CHUNK as {prompt, whole prompts per step}; {0, 0} when not asked.
absl::StatusOr<std::pair<int64_t, int64_t>> ParsePrefill(const std::string& text) {
  if (text.empty()) return std::pair<int64_t, int64_t>{0, 0};
  const std::vector<std::string> parts = absl::StrSplit(text, ':');
  int64_t prompt = 0, chunk = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &prompt) || !absl::SimpleAtoi(parts[1], &chunk) ||
      prompt <= 0 || chunk < prompt) {
    return absl::InvalidArgumentError(absl::StrCat("--prefill wants PROMPT:CHUNK with CHUNK >= PROMPT > 0, not ", text));
  }
  return std::pair<int64_t, int64_t>{prompt, chunk / prompt};
}

absl::Status Run() {
  // Before the decode table, so that a mistyped flag costs no run.
  ASSIGN_OR_RETURN(const auto prefill, ParsePrefill(absl::GetFlag(FLAGS_prefill)));
  ASSIGN_OR_RETURN(std::unique_ptr<Ops> ops, NewOps(absl::GetFlag(FLAGS_device), absl::GetFlag(FLAGS_cuda_graphs)));
  ASSIGN_OR_RETURN(std::string dir, ModelDir(absl::GetFlag(FLAGS_config), absl::GetFlag(FLAGS_layers)));
  std::cerr << "decode_bench: making random weights on " << ops->name() << "\n";
  ASSIGN_OR_RETURN(const WeightsDtype dtype, ParseWeightsDtype(absl::GetFlag(FLAGS_weights_dtype)));
  ASSIGN_OR_RETURN(const KvCacheDtype kv_dtype, ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype)));
  ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::LoadRandom(dir, *ops, ModelShard{}, 1, dtype));
  const ModelConfig& c = model->config();
  const size_t element_bytes = DTypeBytes(ops->storage_dtype());
  ASSIGN_OR_RETURN(const double bandwidth, MeasureBandwidth(*ops, int64_t{1} << 28));
  std::printf("# %s: %lld layers, hidden %lld, %lld heads, %lld experts (top %lld); backend %s, weights %s, "
              "KV cache %s; bandwidth %.1f GB/s\n",
              absl::GetFlag(FLAGS_config).c_str(), static_cast<long long>(c.num_hidden_layers),
              static_cast<long long>(c.hidden_size), static_cast<long long>(c.num_attention_heads),
              static_cast<long long>(c.n_routed_experts), static_cast<long long>(c.num_experts_per_tok),
              std::string(ops->name()).c_str(), absl::GetFlag(FLAGS_weights_dtype).c_str(),
              absl::GetFlag(FLAGS_kv_cache_dtype).c_str(), bandwidth / 1e9);
  std::string table = "batch,context,step_ms,tokens_per_s,roofline_tokens_per_s,fraction_of_roofline\n";
  std::printf("%6s %8s %10s %12s %14s %9s\n", "batch", "context", "step_ms", "tokens/s", "roofline t/s", "of roof");
  const int64_t block_size = absl::GetFlag(FLAGS_block_size);
  for (int64_t context : ParseList(absl::GetFlag(FLAGS_context))) {
    for (int64_t batch : ParseList(absl::GetFlag(FLAGS_batch))) {
      const ForwardBatch step = MakeStep(c, batch, /*tokens=*/1, context + 1, block_size);
      ASSIGN_OR_RETURN(KvCache cache,
                       KvCache::Create(*ops, c, batch * BlocksFor(context + 1, block_size), block_size, kv_dtype));
      // The context is taken as already computed: random latent rows.
      RETURN_IF_ERROR(FillCache(*ops, c, cache));
      ASSIGN_OR_RETURN(const double step_s, SecondsPerStep(*model, *ops, step, cache));
      const double roofline =
          batch / (StepBytes(c, batch, context, element_bytes, dtype == WeightsDtype::kFp8, kv_dtype) / bandwidth);
      const double tokens = batch / step_s;
      std::printf("%6lld %8lld %10.3f %12.1f %14.1f %8.1f%%\n", static_cast<long long>(batch),
                  static_cast<long long>(context), step_s * 1e3, tokens, roofline, 100 * tokens / roofline);
      std::fflush(stdout);
      absl::StrAppend(&table, batch, ",", context, ",", step_s * 1e3, ",", tokens, ",", roofline, ",", tokens / roofline,
                      "\n");
    }
  }
  if (!absl::GetFlag(FLAGS_csv).empty()) std::ofstream(absl::GetFlag(FLAGS_csv)) << table;
  if (const auto [prompt, prompts] = prefill; prompts > 0) {
    const ForwardBatch step = MakeStep(c, prompts, prompt, prompt, block_size);
    ASSIGN_OR_RETURN(KvCache cache,
                     KvCache::Create(*ops, c, prompts * BlocksFor(prompt, block_size), block_size, kv_dtype));
    ASSIGN_OR_RETURN(const double step_s, SecondsPerStep(*model, *ops, step, cache));
    std::printf("prefill: %lld prompts x %lld tokens per step: %.3f ms per step, %.1f prompt tokens/s\n",
                static_cast<long long>(prompts), static_cast<long long>(prompt), step_s * 1e3,
                prompts * prompt / step_s);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace mlaserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  absl::Status status = mlaserve::Run();
  if (!status.ok()) {
    std::cerr << "decode_bench: " << status << "\n";
    return 1;
  }
  return 0;
}
