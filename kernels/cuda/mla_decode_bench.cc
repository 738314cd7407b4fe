// Absorbed MLA decode (kernels/cuda/mla_attention) on the GPU: time per call,
// latent bytes read per second against a device-to-device copy, and FLOP/s
// against a cuBLAS bf16 GEMM, both measured in the same run.
//
// Shapes as kernels/cuda/flashmla_baseline/flashmla_bench.cu (so the tables
// compare): one query token per sequence, h heads against the latent cache of
// 576 (512 c_kv + 64 k_rope), output 512 wide, bf16, 64-token blocks in a
// random block order, every sequence `context` tokens long, inputs uniform in
// [-1, 1), softmax scale 1/sqrt(192). One call = MlaAttention::Absorbed for one
// layer with the plan already made (it is made once per step, on the first
// layer); the host cost of a call that plans is timed apart (us_plan, host
// only), as is that of a call that reuses the plan (us_host).
// Time per call = CUDA events over back-to-back calls after warm-up (>= 20 ms
// or >= 10 calls), median of 3 repetitions; again with the calls captured in a
// CUDA graph. Consecutive calls read different cache regions (and queries)
// until >= --rotate_mb MiB has been touched, so small shapes do not run from L2.
// TB/s = (batch * context * row bytes + batch * heads * (576 + 512) * 2) / time,
// a row being 576 * 2 bytes, or 656 in an FP8 cache (--kv=fp8, kernels/latent_row.h:
// rows quantized from the same uniform values; kernel column "mlaserve_fp8");
// TFLOP/s = 2 * heads * (576 + 512) * batch * context / time.
//
//   mla_decode_bench [--heads=128,16] [--batches=1,2,...,256]
//                    [--contexts=1024,...,65536] [--max_cache_gb=40] [--kv=bf16|fp8]
//                    [--target_ms=20] [--rotate_mb=512] [--no_graph] [--csv=PATH]
// CSV goes to --csv, else to $OUT/mla_decode.csv when OUT is set.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/bench_checks.h"
#include "kernels/cuda/bench_util.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/mla_attention.h"
#include "kernels/cuda/mla/kernels.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace mlaserve {
namespace {

constexpr int kRank = 512, kRope = 64, kD = kRank + kRope, kPage = 64;

// The CSV keeps the variant column of the runs recorded in docs/data, which
// compared kernel variants; the kernels left are what variant 11 was.
constexpr int kVariant = 11;

// FP8 cache rows quantized (cuda::WriteLatentCacheFp8) from uniform bf16 rows, a
// chunk of rows at a time.
void FillFp8Rows(uint8_t* pool, size_t rows, cudaStream_t stream) {
  constexpr int64_t kChunk = 1 << 18;
  void *c_kv, *k_rope, *slots;
  CK(cudaMalloc(&c_kv, kChunk * kRank * 2));
  CK(cudaMalloc(&k_rope, kChunk * kRope * 2));
  CK(cudaMalloc(&slots, kChunk * sizeof(int64_t)));
  FillUniformBf16(c_kv, kChunk * kRank, 42, stream);
  FillUniformBf16(k_rope, kChunk * kRope, 43, stream);
  std::vector<int64_t> ids(kChunk);
  const cuda::Fp8RowLayout layout{.bytes = cuda::kMlaFp8RowBytes, .scales_at = cuda::kMlaFp8ScalesAt, .rope_at = cuda::kMlaFp8RopeAt};
  for (size_t first = 0; first < rows; first += kChunk) {
    const int64_t n = std::min<int64_t>(kChunk, static_cast<int64_t>(rows - first));
    std::iota(ids.begin(), ids.begin() + n, static_cast<int64_t>(first));
    CK(cudaMemcpyAsync(slots, ids.data(), n * sizeof(int64_t), cudaMemcpyHostToDevice, stream));
    const cuda::LatentCacheGeometry geometry{.layers = 1, .block_size = 1, .rank = kRank, .rope = kRope, .layer = 0};
    CK(cuda::WriteLatentCacheFp8(static_cast<const __nv_bfloat16*>(c_kv), static_cast<const __nv_bfloat16*>(k_rope),
                                 static_cast<const int64_t*>(slots), n, geometry, layout, pool, stream));
    CK(cudaStreamSynchronize(stream));
  }
  CK(cudaFree(c_kv));
  CK(cudaFree(k_rope));
  CK(cudaFree(slots));
}

struct Options {
  std::vector<int> heads = {128, 16};
  std::vector<int> batches = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  std::vector<int> contexts = {1024, 2048, 4096, 8192, 16384, 32768, 65536};
  double max_cache_gb = 40;
  double target_ms = 20;
  double rotate_mb = 512;
  double softmax_scale = 1.0 / std::sqrt(192.0);
  bool graph = true;
  bool fp8 = false;
  std::string csv;
  int row_bytes() const { return fp8 ? cuda::kMlaFp8RowBytes : kD * 2; }
};

Options ParseOptions(int argc, char** argv) {
  Options o;
  if (const char* out = getenv("OUT"); out != nullptr && *out) o.csv = std::string(out) + "/mla_decode.csv";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](const char* name) { return FlagValue(a, name); };
    if (const char* v = val("--heads="))
      o.heads = ParseList(v);
    else if (const char* v = val("--batches="))
      o.batches = ParseList(v);
    else if (const char* v = val("--contexts="))
      o.contexts = ParseList(v);
    else if (const char* v = val("--max_cache_gb="))
      o.max_cache_gb = atof(v);
    else if (const char* v = val("--target_ms="))
      o.target_ms = atof(v);
    else if (const char* v = val("--rotate_mb="))
      o.rotate_mb = atof(v);
    else if (const char* v = val("--csv="))
      o.csv = v;
    else if (a == "--no_graph")
      o.graph = false;
    else if (a == "--kv=fp8" || a == "--kv=bf16")
      o.fp8 = a == "--kv=fp8";
    else {
      fprintf(stderr, "unknown flag %s\n", a.c_str());
      exit(2);
    }
  }
  return o;
}

double HostUs(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

}  // namespace
}  // namespace mlaserve

int main(int argc, char** argv) {
  using namespace mlaserve;
  Options opt = ParseOptions(argc, argv);
  CK(cudaSetDevice(0));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("device: %s, sm_%d%d, %d SMs, %.1f GiB, L2 %.0f MB\n", prop.name, prop.major, prop.minor,
         prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, prop.l2CacheSize / 1e6);
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  struct Shape {
    int heads, batch, context;
  };
  std::vector<Shape> shapes, skipped;
  int64_t pool_blocks = 0;
  for (int h : opt.heads) {
    for (int b : opt.batches) {
      for (int ctx : opt.contexts) {
        const int64_t blocks = static_cast<int64_t>(b) * ((ctx + kPage - 1) / kPage);
        if (static_cast<double>(blocks) * kPage * opt.row_bytes() / 1e9 > opt.max_cache_gb) {
          skipped.push_back({h, b, ctx});
          continue;
        }
        shapes.push_back({h, b, ctx});
        pool_blocks = std::max(pool_blocks, blocks);
      }
    }
  }
  // Room to rotate small shapes over rotate_mb.
  pool_blocks =
      std::max<int64_t>(pool_blocks, static_cast<int64_t>(opt.rotate_mb * 1048576.0 / (kPage * opt.row_bytes())) + 1);

  const double copy_tbps = CopyTbps(stream);
  const double gemm_tflops = GemmTflops(stream);
  printf("device-to-device copy: %.3f TB/s (read + write, 1 GiB)\n", copy_tbps);
  printf("GEMM: %.1f TFLOP/s (cuBLAS bf16 8192^3, fp32 compute)\n", gemm_tflops);

  void* pool = nullptr;
  const size_t pool_rows = static_cast<size_t>(pool_blocks) * kPage, pool_bytes = pool_rows * opt.row_bytes();
  CK(cudaMalloc(&pool, pool_bytes));
  if (opt.fp8) {
    FillFp8Rows(static_cast<uint8_t*>(pool), pool_rows, stream);
  } else {
    FillUniformBf16(pool, pool_rows * kD, 42, stream);
  }
  CK(cudaStreamSynchronize(stream));
  printf("cache pool: %lld blocks of 64 rows of %d bytes (%s, %.2f GB)\n", (long long)pool_blocks, opt.row_bytes(),
         opt.fp8 ? "FP8" : "bf16", pool_bytes / 1e9);
  const char* kernel_name = opt.fp8 ? "mlaserve_fp8" : "mlaserve";

  FILE* csv = nullptr;
  if (!opt.csv.empty()) {
    csv = fopen(opt.csv.c_str(), "w");
    if (csv == nullptr) {
      fprintf(stderr, "cannot write %s\n", opt.csv.c_str());
      return 1;
    }
    fprintf(csv, "# device=%s sms=%d copy_tbps=%.3f gemm_tflops=%.1f softmax_scale=%.6f rotate_mb=%.0f\n", prop.name,
            prop.multiProcessorCount, copy_tbps, gemm_tflops, opt.softmax_scale, opt.rotate_mb);
    fprintf(
        csv,
        "kernel,variant,heads,batch,context,cache_gb,ctas,replicas,iters,us_per_call,tbps,tflops,us_graph,tbps_graph,"
        "tflops_graph,us_plan,us_host\n");
    for (const Shape& s : skipped) {
      fprintf(csv, "%s,,%d,%d,%d,,,,,skipped(cache>%.0fGB),,,,,,,\n", kernel_name, s.heads, s.batch, s.context,
              opt.max_cache_gb);
    }
  }
  for (const Shape& s : skipped) {
    printf("skip heads=%d batch=%d context=%d: cache above %.0f GB\n", s.heads, s.batch, s.context, opt.max_cache_gb);
  }
  printf("\n%2s %6s %6s %8s %9s %7s %4s %10s %8s %8s %10s %8s %8s %8s %8s\n", "v", "heads", "batch", "context",
         "cache_GB", "CTAs", "rot", "us/call", "TB/s", "TFLOP/s", "us/graph", "TB/s", "TFLOP/s", "us_plan", "us_host");

  uint64_t seed = 7;
  for (const Shape& s : shapes) {
    const int64_t blocks_per_seq = (s.context + kPage - 1) / kPage;
    const int64_t blocks = s.batch * blocks_per_seq;
    const double cache_bytes = static_cast<double>(blocks) * kPage * opt.row_bytes();
    int replicas = static_cast<int>(std::ceil(opt.rotate_mb * 1048576.0 / cache_bytes));
    replicas = static_cast<int>(std::clamp<int64_t>(replicas, 1, pool_blocks / blocks));

    // One layout (block ids within a replica's region, shuffled); replica r reads
    // the pool from block r * blocks on, and its own queries.
    std::mt19937_64 rng(seed++);
    std::vector<int32_t> ids(blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    AttentionLayout layout;
    layout.block_size = kPage;
    for (int b = 0; b < s.batch; ++b) {
      SequenceSlice seq;
      seq.token_begin = b;
      seq.num_tokens = 1;
      seq.context_len = s.context;
      seq.block_table.assign(ids.begin() + b * blocks_per_seq, ids.begin() + (b + 1) * blocks_per_seq);
      layout.seqs.push_back(std::move(seq));
    }
    const size_t q_elems = static_cast<size_t>(s.batch) * s.heads;
    void *q_latent, *q_rope, *out;
    CK(cudaMalloc(&q_latent, q_elems * kRank * 2 * replicas));
    CK(cudaMalloc(&q_rope, q_elems * kRope * 2 * replicas));
    CK(cudaMalloc(&out, q_elems * kRank * 2));
    FillUniformBf16(q_latent, q_elems * kRank * replicas, seed * 3, stream);
    FillUniformBf16(q_rope, q_elems * kRope * replicas, seed * 5, stream);
    CK(cudaStreamSynchronize(stream));
    std::vector<Tensor> ql, qr, cache;
    for (int r = 0; r < replicas; ++r) {
      ql.push_back(DeviceBf16View(static_cast<uint16_t*>(q_latent) + r * q_elems * kRank, {s.batch, s.heads, kRank}));
      qr.push_back(DeviceBf16View(static_cast<uint16_t*>(q_rope) + r * q_elems * kRope, {s.batch, s.heads, kRope}));
      Tensor view = DeviceBf16View(static_cast<uint8_t*>(pool) + static_cast<size_t>(r) * blocks * kPage * opt.row_bytes(),
                                   {blocks, 1, kPage, opt.fp8 ? opt.row_bytes() : kD});
      if (opt.fp8) view.dtype = DType::kU8;
      cache.push_back(view);
    }
    Tensor o = DeviceBf16View(out, {s.batch, s.heads, kRank});
    const float scale = static_cast<float>(opt.softmax_scale);
    MlaAttention attention(stream);
    auto call = [&](int i) {
      const int r = i % replicas;
      OK(attention.Absorbed(ql[r], qr[r], cache[r], 0, layout, scale, &o));
    };

    // Host cost of a call that plans (a new layout each time: one block id swapped
    // back and forth) and of one that reuses the plan.
    call(0);
    CK(cudaStreamSynchronize(stream));
    AttentionLayout other = layout;
    if (blocks_per_seq > 1) std::swap(other.seqs[0].block_table[0], other.seqs[0].block_table[1]);
    double plan_us[3], host_us[3];
    for (int k = 0; k < 3; ++k) {
      const auto t0 = std::chrono::steady_clock::now();
      OK(attention.Absorbed(ql[0], qr[0], cache[0], 0, k % 2 == 0 ? other : layout, scale, &o));
      const auto t1 = std::chrono::steady_clock::now();
      CK(cudaStreamSynchronize(stream));
      plan_us[k] = HostUs(t0, t1);
    }
    call(0);  // back to `layout`
    CK(cudaStreamSynchronize(stream));
    for (int k = 0; k < 3; ++k) {
      const auto t0 = std::chrono::steady_clock::now();
      call(0);
      const auto t1 = std::chrono::steady_clock::now();
      CK(cudaStreamSynchronize(stream));
      host_us[k] = HostUs(t0, t1);
    }

    for (int i = 0; i < 3; ++i) call(i);
    CK(cudaStreamSynchronize(stream));
    const double est = TimeMs(stream, 5, call);
    const int iters = static_cast<int>(std::clamp(opt.target_ms / std::max(est, 1e-4), 10.0, 5000.0));
    double t[3];
    for (double& x : t) x = TimeMs(stream, iters, call);
    CK(cudaGetLastError());
    const double us = 1e3 * Median3(t[0], t[1], t[2]);

    double us_graph = NAN;
    if (opt.graph) {
      const int g = std::clamp(iters, 10, 200);
      const int reps = std::max(1, iters / g);
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
      for (int i = 0; i < g; ++i) call(i);
      CK(cudaStreamEndCapture(stream, &graph));
      CK(cudaGraphInstantiate(&exec, graph, 0));
      CK(cudaGraphLaunch(exec, stream));
      CK(cudaStreamSynchronize(stream));
      double tg[3];
      for (double& x : tg) x = TimeMs(stream, reps, [&](int) { CK(cudaGraphLaunch(exec, stream)); });
      CK(cudaGraphExecDestroy(exec));
      CK(cudaGraphDestroy(graph));
      us_graph = 1e3 * Median3(tg[0], tg[1], tg[2]) / g;
    }

    const int tiles = s.heads <= 32 ? (s.heads + 15) / 16 : (s.heads + 63) / 64;
    const int64_t ctas = static_cast<int64_t>(s.batch) * tiles * ((s.context + 511) / 512);
    const double bytes = static_cast<double>(s.batch) * s.context * opt.row_bytes() +
                         static_cast<double>(s.batch) * s.heads * (kD + kRank) * 2;
    const double flops = 2.0 * s.heads * (kD + kRank) * static_cast<double>(s.batch) * s.context;
    const double tbps = bytes / (us * 1e-6) / 1e12, tflops = flops / (us * 1e-6) / 1e12;
    const double tbps_g = bytes / (us_graph * 1e-6) / 1e12, tflops_g = flops / (us_graph * 1e-6) / 1e12;
    const double us_plan = Median3(plan_us[0], plan_us[1], plan_us[2]);
    const double us_host = Median3(host_us[0], host_us[1], host_us[2]);
    printf("%2d %6d %6d %8d %9.3f %7lld %4d %10.1f %8.3f %8.1f %10.1f %8.3f %8.1f %8.1f %8.1f\n", kVariant, s.heads,
           s.batch, s.context, cache_bytes / 1e9, (long long)ctas, replicas, us, tbps, tflops, us_graph, tbps_g,
           tflops_g, us_plan, us_host);
    fflush(stdout);
    if (csv) {
      fprintf(csv, "%s,%d,%d,%d,%d,%.4f,%lld,%d,%d,%.2f,%.4f,%.2f,%.2f,%.4f,%.2f,%.1f,%.1f\n", kernel_name, kVariant,
              s.heads,
              s.batch, s.context, cache_bytes / 1e9, (long long)ctas, replicas, iters, us, tbps, tflops, us_graph,
              tbps_g, tflops_g, us_plan, us_host);
      fflush(csv);
    }
    CK(cudaFree(q_latent));
    CK(cudaFree(q_rope));
    CK(cudaFree(out));
  }
  if (csv) fclose(csv);
  CK(cudaFree(pool));
  CK(cudaStreamDestroy(stream));
  printf("done\n");
  return 0;
}
