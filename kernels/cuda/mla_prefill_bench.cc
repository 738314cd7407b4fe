// MLA attention of a prompt chunk on the GPU, in both forms as the model runs
// them (worker/model.cc), at DeepSeek's dims (rank 512, rope 64, nope 128,
// v 128), bf16, one layer, one sequence of `chunk` new tokens at the end of a
// `context`-token cache (64-token blocks in a random order):
//   absorbed: q_nope -> q_latent (HeadLinear), MlaAbsorbedAttention over the
//     paged latent cache, o_latent -> o (HeadLinear);
//   expanded: the context's latent rows gathered once, then per group of
//     heads (worker/attention_form.h's scratch bound) K and V up-projected
//     (two Linear) and MlaExpandedAttention.
// Each part is timed apart (host clock around Synchronize, after a warm-up
// call; median of --reps). Attention TFLOP/s count each form's own pair FLOPs
// (2 (rank + rope + rank) and 2 (nope + rope + dv) per pair and head); the
// "useful" rate of a whole path counts the expanded form's pair FLOPs, so the
// two paths compare. Beside them, from the same run: cuBLAS's bf16 GEMM rate
// (8192^3), and which form worker/attention_form.h's rule picks.
//
//   mla_prefill_bench [--heads=16,128] [--chunks=4096,8192]
//                     [--contexts=4096,8192,16384,32768,65536,131072]
//                     [--reps=3] [--csv=PATH]
// Contexts shorter than a chunk are skipped. CSV goes to --csv, else to
// $OUT/mla_prefill.csv when OUT is set.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/bench_checks.h"
#include "kernels/cuda/bench_util.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"
#include "worker/attention_form.h"

namespace mlaserve {
namespace {

constexpr int64_t kRank = 512, kRope = 64, kNope = 128, kDv = 128, kBlock = 64;

template <typename T>
T Must(absl::StatusOr<T> v) {
  if (!v.ok()) {
    fprintf(stderr, "%s\n", v.status().ToString().c_str());
    exit(1);
  }
  return *std::move(v);
}

struct Options {
  std::vector<int> heads = {16, 128};
  std::vector<int> chunks = {4096, 8192};
  std::vector<int> contexts = {4096, 8192, 16384, 32768, 65536, 131072};
  int reps = 3;
  std::string csv;
};

Options ParseOptions(int argc, char** argv) {
  Options o;
  if (const char* out = getenv("OUT"); out != nullptr && *out) o.csv = std::string(out) + "/mla_prefill.csv";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](const char* name) { return FlagValue(a, name); };
    if (const char* v = val("--heads=")) {
      o.heads = ParseList(v);
    } else if (const char* v = val("--chunks=")) {
      o.chunks = ParseList(v);
    } else if (const char* v = val("--contexts=")) {
      o.contexts = ParseList(v);
    } else if (const char* v = val("--reps=")) {
      o.reps = std::max(1, atoi(v));
    } else if (const char* v = val("--csv=")) {
      o.csv = v;
    } else {
      fprintf(stderr, "unknown flag %s\n", a.c_str());
      exit(2);
    }
  }
  return o;
}

// Median milliseconds of `reps` calls of f after one warm-up.
template <typename F>
double MedianMs(Ops& ops, int reps, F&& f) {
  f();
  OK(ops.Synchronize());
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto a = std::chrono::steady_clock::now();
    f();
    OK(ops.Synchronize());
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2];
}

Tensor Random(Ops& ops, std::vector<int64_t> shape, uint64_t seed, float stddev) {
  Tensor t = Must(ops.Empty(DType::kBF16, std::move(shape)));
  OK(ops.FillRandom(&t, seed, 0.0f, stddev));
  return t;
}

struct Row {
  int64_t heads, chunk, context, group_heads;
  double pairs;
  double abs_gemm_ms, abs_attn_ms, exp_gather_ms, exp_gemm_ms, exp_attn_ms;
  bool rule_expanded;
};

Row Measure(Ops& ops, int64_t heads, int64_t chunk, int64_t context, int reps, uint64_t seed) {
  const ModelConfig dims{.kv_lora_rank = kRank, .qk_nope_head_dim = kNope, .qk_rope_head_dim = kRope,
                         .v_head_dim = kDv};
  const int64_t blocks = (context + kBlock - 1) / kBlock;
  std::vector<int32_t> table(blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(static_cast<uint32_t>(seed)));
  // Inputs of unit variance, scaled as a trained model's are, so that softmax is neither flat nor one-hot.
  Tensor cache = Random(ops, {blocks, 1, kBlock, kRank + kRope}, seed, 1.0f);
  Tensor q_nope = Random(ops, {chunk, heads, kNope}, seed + 1, 1.0f);
  Tensor q_rope = Random(ops, {chunk, heads, kRope}, seed + 2, 1.0f);
  Tensor w_uk = Random(ops, {heads * kNope, kRank}, seed + 3, 0.04f);
  Tensor w_uk_t = Random(ops, {heads, kRank, kNope}, seed + 4, 0.04f);
  Tensor w_uv = Random(ops, {heads, kDv, kRank}, seed + 5, 0.04f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kNope + kRope));
  AttentionLayout layout{.block_size = kBlock};
  layout.seqs.push_back({.token_begin = 0, .num_tokens = chunk, .context_len = context, .block_table = table});

  Row row{.heads = heads, .chunk = chunk, .context = context};
  row.pairs = static_cast<double>(chunk) * (context - chunk) + chunk * (chunk + 1) / 2.0;
  row.group_heads = ExpandedGroupHeads(dims, heads, context, 2, kDefaultExpandedScratchBytes);
  row.rule_expanded = row.group_heads > 0 && ExpandedIsCheaper(dims, row.group_heads, chunk, context);

  // Absorbed.
  Tensor q_latent = Must(ops.Empty(DType::kBF16, {chunk, heads, kRank}));
  Tensor o_latent = Must(ops.Empty(DType::kBF16, {chunk, heads, kRank}));
  Tensor o = Must(ops.Empty(DType::kBF16, {chunk, heads, kDv}));
  row.abs_gemm_ms = MedianMs(ops, reps, [&] {
    OK(ops.HeadLinear(q_nope, w_uk_t, &q_latent));
    OK(ops.HeadLinear(o_latent, w_uv, &o));
  });
  row.abs_attn_ms = MedianMs(
      ops, reps, [&] { OK(ops.MlaAbsorbedAttention(q_latent, q_rope, cache, 0, layout, scale, &o_latent)); });

  // Expanded, a group of heads at a time as the model does.
  Tensor c_kv = Must(ops.Empty(DType::kBF16, {context, kRank}));
  Tensor k_rope = Must(ops.Empty(DType::kBF16, {context, kRope}));
  row.exp_gather_ms = MedianMs(ops, reps, [&] { OK(ops.GatherLatent(cache, 0, table, context, &c_kv, &k_rope)); });
  const int64_t group = row.group_heads > 0 ? row.group_heads : 1;
  const Tensor w_uv_rows = Reshape(w_uv, {heads * kDv, kRank});
  std::vector<Tensor> k_nope, v;
  for (int64_t first = 0; first < heads; first += group) {
    const int64_t n = std::min(group, heads - first);
    k_nope.push_back(Must(ops.Empty(DType::kBF16, {context, n * kNope})));
    v.push_back(Must(ops.Empty(DType::kBF16, {context, n * kDv})));
  }
  // Every group's K and V kept at once here (the model frees each before the next), so that the
  // attention is timed apart from the GEMMs.
  row.exp_gemm_ms = MedianMs(ops, reps, [&] {
    for (size_t g = 0; g < k_nope.size(); ++g) {
      const int64_t first = static_cast<int64_t>(g) * group, n = k_nope[g].dim(1) / kNope;
      OK(ops.Linear(c_kv, SliceRows(w_uk, first * kNope, n * kNope), &k_nope[g]));
      OK(ops.Linear(c_kv, SliceRows(w_uv_rows, first * kDv, n * kDv), &v[g]));
    }
  });
  row.exp_attn_ms = MedianMs(ops, reps, [&] {
    for (size_t g = 0; g < k_nope.size(); ++g) {
      const int64_t first = static_cast<int64_t>(g) * group, n = k_nope[g].dim(1) / kNope;
      OK(ops.MlaExpandedAttention(q_nope, q_rope, Reshape(k_nope[g], {context, n, kNope}), k_rope,
                                  Reshape(v[g], {context, n, kDv}), first, scale, &o));
    }
  });
  return row;
}

}  // namespace
}  // namespace mlaserve

int main(int argc, char** argv) {
  using namespace mlaserve;
  const Options opt = ParseOptions(argc, argv);
  CK(cudaSetDevice(0));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("device: %s, sm_%d%d, %d SMs, %.1f GiB\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount,
         prop.totalGlobalMem / 1073741824.0);
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const double gemm_tflops = GemmTflops(stream);
  printf("cuBLAS bf16 GEMM 8192^3: %.0f TFLOP/s\n", gemm_tflops);
  std::unique_ptr<Ops> ops = Must(NewCudaOps(0));

  FILE* csv = opt.csv.empty() ? nullptr : fopen(opt.csv.c_str(), "w");
  const char* header =
      "heads,chunk,context,group_heads,abs_gemm_ms,abs_attn_ms,abs_ms,abs_attn_tflops,exp_gather_ms,exp_gemm_ms,"
      "exp_attn_ms,exp_ms,exp_attn_tflops,exp_gemm_tflops,useful_tflops_abs,useful_tflops_exp,faster,rule,"
      "gemm_ref_tflops\n";
  printf("%s", header);
  if (csv != nullptr) fputs(header, csv);
  uint64_t seed = 1;
  for (int heads : opt.heads) {
    for (int chunk : opt.chunks) {
      for (int context : opt.contexts) {
        if (context < chunk) continue;
        const Row r = Measure(*ops, heads, chunk, context, opt.reps, seed += 10);
        const double abs_ms = r.abs_gemm_ms + r.abs_attn_ms;
        const double exp_ms = r.exp_gather_ms + r.exp_gemm_ms + r.exp_attn_ms;
        const double abs_flops = r.pairs * heads * 2 * (kRank + kRope + kRank);
        const double exp_flops = r.pairs * heads * 2 * (kNope + kRope + kDv);
        const double gemm_flops = 2.0 * context * heads * (kNope + kDv) * kRank;
        char line[512];
        snprintf(line, sizeof(line),
                 "%d,%d,%d,%lld,%.3f,%.3f,%.3f,%.1f,%.3f,%.3f,%.3f,%.3f,%.1f,%.1f,%.1f,%.1f,%s,%s,%.0f\n", heads,
                 chunk, context, static_cast<long long>(r.group_heads), r.abs_gemm_ms, r.abs_attn_ms, abs_ms,
                 abs_flops / (r.abs_attn_ms * 1e9), r.exp_gather_ms, r.exp_gemm_ms, r.exp_attn_ms, exp_ms,
                 exp_flops / (r.exp_attn_ms * 1e9), gemm_flops / (r.exp_gemm_ms * 1e9), exp_flops / (abs_ms * 1e9),
                 exp_flops / (exp_ms * 1e9), exp_ms < abs_ms ? "expanded" : "absorbed",
                 r.rule_expanded ? "expanded" : "absorbed", gemm_tflops);
        printf("%s", line);
        fflush(stdout);
        if (csv != nullptr) {
          fputs(line, csv);
          fflush(csv);
        }
      }
    }
  }
  if (csv != nullptr) fclose(csv);
  return 0;
}
