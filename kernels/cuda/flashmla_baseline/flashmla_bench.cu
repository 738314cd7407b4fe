// Baseline for our MLA decode kernel: FlashMLA's SM90 dense bf16 decode
// (deepseek-ai/FlashMLA, csrc/sm90/decode/dense plus its scheduler and combine
// kernels), driven without PyTorch. None of FlashMLA is in this repository:
// build.sh fetches its sources at a pinned commit into a temporary directory,
// compiles them with this harness and puts the binary in .bundle/bin/.
//
// What one "call" is: FlashMLA's flash_mla_with_kvcache for one layer with the
// scheduling metadata already made (it is made once per decode step and shared
// by every layer): the split-KV kernel plus the combine kernel, exactly as
// csrc/api/dense_decode.h launches them (PDL between the two). The metadata
// kernel is timed on its own (us_meta).
//
// Shapes: absorbed MLA decode, one query token per sequence, h query heads
// against one latent KV head of 576 (512 c_kv + 64 k_rope), dv 512, bf16, paged
// cache of 64-token blocks in a random block order, every sequence `context`
// tokens long. Figures: time per call (CUDA events over many back-to-back calls
// after warm-up, median of 3 repetitions; again with the calls captured in a
// CUDA graph, which removes the host launch cost), TB/s = (batch*context*576*2
// + queries + outputs) / time, TFLOP/s = 2*heads*(576+512)*batch*context / time.
// Consecutive calls read different cache regions (and queries) until at least
// --rotate_mb MiB has been touched, so that small shapes do not run out of L2.
// Also measured in the same run: a device-to-device copy (bytes read + written)
// and a cuBLAS bf16 8192^3 GEMM (cuBLAS is loaded with dlopen; missing, the
// GEMM is skipped). Before the grid, FlashMLA's output and LSE are checked
// against a float reference on the host (relative L2 error < 1e-2).
//
//   flashmla_bench [--heads=128,16] [--batches=1,2,...,256]
//                  [--contexts=1024,...,65536] [--max_cache_gb=40]
//                  [--target_ms=20] [--rotate_mb=512] [--no_graph]
//                  [--check_only] [--skip_check] [--csv=PATH]
// CSV goes to --csv, else to $OUT/flashmla.csv when OUT is set.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

// FlashMLA (fetched by build.sh).
#include "params.h"
#include "sm90/decode/dense/splitkv_mla.h"
#include "smxx/decode/combine/combine.h"
#include "smxx/decode/get_decoding_sched_meta/get_decoding_sched_meta.h"

namespace {

constexpr int kD = 576;     // c_kv (512) ++ k_rope (64)
constexpr int kDv = 512;    // output (latent) width
constexpr int kPage = 64;   // FlashMLA's page_block_size
constexpr int kFixedOverheadBlocks = 5;  // as in csrc/api/dense_decode.h

#define CK(call)                                                                             \
  do {                                                                                       \
    cudaError_t e_ = (call);                                                                 \
    if (e_ != cudaSuccess) {                                                                 \
      fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, \
              cudaGetErrorString(e_));                                                       \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

using bf16 = __nv_bfloat16;

__host__ __device__ inline uint32_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

// Uniform in [-1, 1).
__host__ __device__ inline float UnitValue(uint64_t i, uint64_t seed) {
  return static_cast<float>(Mix(i * 0x9E3779B97F4A7C15ULL + seed) >> 8) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void FillKernel(bf16* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    p[i] = __float2bfloat16(UnitValue(i, seed));
  }
}

void Fill(bf16* p, size_t n, uint64_t seed, cudaStream_t s) {
  FillKernel<<<2048, 256, 0, s>>>(p, n, seed);
  CK(cudaGetLastError());
}

float Bf16ToFloat(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// ---------------------------------------------------------------- options
struct Options {
  std::vector<int> heads = {128, 16};
  std::vector<int> batches = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  std::vector<int> contexts = {1024, 2048, 4096, 8192, 16384, 32768, 65536};
  double max_cache_gb = 40;
  double target_ms = 20;
  double rotate_mb = 512;
  double softmax_scale = 1.0 / std::sqrt(192.0);  // DeepSeek: 1/sqrt(qk_nope + qk_rope)
  bool graph = true;
  bool check = true;
  bool check_only = false;
  std::string csv;
};

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> v;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    v.push_back(std::atoi(s.substr(pos, comma - pos).c_str()));
    pos = comma + 1;
  }
  return v;
}

Options ParseOptions(int argc, char** argv) {
  Options o;
  if (const char* out = getenv("OUT"); out != nullptr && *out) o.csv = std::string(out) + "/flashmla.csv";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](const char* name) -> const char* {
      size_t n = strlen(name);
      return a.compare(0, n, name) == 0 ? a.c_str() + n : nullptr;
    };
    if (const char* v = val("--heads=")) o.heads = ParseList(v);
    else if (const char* v = val("--batches=")) o.batches = ParseList(v);
    else if (const char* v = val("--contexts=")) o.contexts = ParseList(v);
    else if (const char* v = val("--max_cache_gb=")) o.max_cache_gb = atof(v);
    else if (const char* v = val("--target_ms=")) o.target_ms = atof(v);
    else if (const char* v = val("--rotate_mb=")) o.rotate_mb = atof(v);
    else if (const char* v = val("--softmax_scale=")) o.softmax_scale = atof(v);
    else if (const char* v = val("--csv=")) o.csv = v;
    else if (a == "--no_graph") o.graph = false;
    else if (a == "--skip_check") o.check = false;
    else if (a == "--check_only") o.check_only = true;
    else {
      fprintf(stderr, "unknown flag %s\n", a.c_str());
      exit(2);
    }
  }
  return o;
}

// ---------------------------------------------------------------- FlashMLA driver
int NumSmParts(int num_sms, int heads) {
  // csrc/api/dense_decode.h with s_q = 1, h_k = 1.
  return std::max(num_sms / 1 / ((heads + 63) / 64), 1);
}

// One decode shape: `replicas` independent copies (block tables into disjoint
// regions of the cache pool, and queries) that consecutive calls rotate over.
struct Case {
  int batch = 0, heads = 0, blocks_per_seq = 0, replicas = 1, num_sm_parts = 0;
  std::vector<int> seqlens;
  bf16* q = nullptr;        // [replicas][batch][heads][576]
  int* block_table = nullptr;  // [replicas][batch][blocks_per_seq]
  int* seqlens_d = nullptr;    // [batch]
  bf16* out = nullptr;         // [batch][heads][512]
  float* lse = nullptr;        // [batch][heads]
  DecodingSchedMeta* meta = nullptr;  // [num_sm_parts]
  int* num_splits = nullptr;          // [batch + 1]
  float* lse_accum = nullptr;  // [batch + num_sm_parts][heads]
  float* o_accum = nullptr;    // [batch + num_sm_parts][heads][512]
  std::vector<int> host_block_table;
};

struct Bench {
  cudaStream_t stream = nullptr;
  int num_sms = 0;
  bf16* pool = nullptr;  // [pool_blocks][64][576]
  int64_t pool_blocks = 0;
  float scale = 0;
};

void SetupCase(const Bench& bench, Case& c, int batch, int heads, const std::vector<int>& seqlens, int replicas,
               uint64_t seed) {
  c.batch = batch;
  c.heads = heads;
  c.seqlens = seqlens;
  int max_len = *std::max_element(seqlens.begin(), seqlens.end());
  c.blocks_per_seq = std::max(1, (max_len + kPage - 1) / kPage);
  c.replicas = replicas;
  c.num_sm_parts = NumSmParts(bench.num_sms, heads);
  const int64_t blocks = static_cast<int64_t>(batch) * c.blocks_per_seq;
  if (blocks * replicas > bench.pool_blocks) {
    fprintf(stderr, "internal: case needs %lld blocks, pool has %lld\n", (long long)(blocks * replicas),
            (long long)bench.pool_blocks);
    exit(1);
  }
  // Each replica: a random permutation of its own range of pool blocks.
  std::mt19937_64 rng(seed);
  c.host_block_table.resize(static_cast<size_t>(blocks) * replicas);
  for (int r = 0; r < replicas; ++r) {
    int* bt = c.host_block_table.data() + static_cast<size_t>(r) * blocks;
    for (int64_t i = 0; i < blocks; ++i) bt[i] = static_cast<int>(r * blocks + i);
    std::shuffle(bt, bt + blocks, rng);
  }
  const size_t q_elems = static_cast<size_t>(batch) * heads * kD;
  CK(cudaMalloc(&c.q, q_elems * replicas * sizeof(bf16)));
  Fill(c.q, q_elems * replicas, seed ^ 0x51, bench.stream);
  CK(cudaMalloc(&c.block_table, c.host_block_table.size() * sizeof(int)));
  CK(cudaMemcpy(c.block_table, c.host_block_table.data(), c.host_block_table.size() * sizeof(int),
                cudaMemcpyHostToDevice));
  CK(cudaMalloc(&c.seqlens_d, batch * sizeof(int)));
  CK(cudaMemcpy(c.seqlens_d, seqlens.data(), batch * sizeof(int), cudaMemcpyHostToDevice));
  CK(cudaMalloc(&c.out, static_cast<size_t>(batch) * heads * kDv * sizeof(bf16)));
  CK(cudaMalloc(&c.lse, static_cast<size_t>(batch) * heads * sizeof(float)));
  CK(cudaMalloc(&c.meta, c.num_sm_parts * sizeof(DecodingSchedMeta)));
  CK(cudaMalloc(&c.num_splits, (batch + 1) * sizeof(int)));
  const size_t splits = static_cast<size_t>(batch) + c.num_sm_parts;
  CK(cudaMalloc(&c.lse_accum, splits * heads * sizeof(float)));
  CK(cudaMalloc(&c.o_accum, splits * heads * kDv * sizeof(float)));
  CK(cudaStreamSynchronize(bench.stream));
}

void FreeCase(Case& c) {
  for (void* p : {(void*)c.q, (void*)c.block_table, (void*)c.seqlens_d, (void*)c.out, (void*)c.lse, (void*)c.meta,
                  (void*)c.num_splits, (void*)c.lse_accum, (void*)c.o_accum}) {
    CK(cudaFree(p));
  }
  c = Case{};
}

// get_mla_metadata: once per decode step (depends only on the lengths).
void RunMetadata(const Bench& bench, Case& c) {
  GetDecodeSchedMetaParams m{};
  m.b = c.batch;
  m.s_q = 1;
  m.block_size_n = kPage;
  m.fixed_overhead_num_blocks = kFixedOverheadBlocks;
  m.topk = -1;
  m.extra_topk = -1;
  m.topk_length = nullptr;
  m.extra_topk_length = nullptr;
  m.seqlens_k_ptr = c.seqlens_d;
  m.tile_scheduler_metadata_ptr = c.meta;
  m.num_splits_ptr = c.num_splits;
  m.num_sm_parts = c.num_sm_parts;
  m.stream = bench.stream;
  smxx::decode::run_get_decoding_sched_meta_kernel(m);
}

// One layer's decode attention (split-KV kernel + combine), replica r.
void RunCall(const Bench& bench, Case& c, int r) {
  const int h = c.heads;
  DenseAttnDecodeParams p{};
  p.b = c.batch;
  p.s_q = 1;
  p.q_seq_per_hk = h;  // s_q * h_q / h_k
  p.seqlens_k_ptr = c.seqlens_d;
  p.h_q = h;
  p.h_k = 1;
  p.num_blocks = static_cast<int>(bench.pool_blocks);
  p.q_head_per_hk = h;
  p.is_causal = false;
  p.d = kD;
  p.d_v = kDv;
  p.scale_softmax = bench.scale;
  p.scale_softmax_log2 = static_cast<float>(bench.scale * M_LOG2E);
  p.q_ptr = c.q + static_cast<size_t>(r) * c.batch * h * kD;
  p.k_ptr = bench.pool;
  p.o_ptr = c.out;
  p.softmax_lse_ptr = c.lse;
  // q viewed as [b, q_seq_per_hk = h, h_k = 1, 576], kcache [blocks, 64, 1, 576],
  // out [b, h_k = 1, h, 512]; strides in elements (dense_decode.h).
  p.q_batch_stride = static_cast<int64_t>(h) * kD;
  p.q_row_stride = kD;
  p.q_head_stride = kD;
  p.k_batch_stride = static_cast<int64_t>(kPage) * kD;
  p.k_row_stride = kD;
  p.k_head_stride = kD;
  p.o_batch_stride = static_cast<int64_t>(h) * kDv;
  p.o_row_stride = kDv;
  p.o_head_stride = static_cast<int64_t>(h) * kDv;
  p.block_table = c.block_table + static_cast<size_t>(r) * c.batch * c.blocks_per_seq;
  p.block_table_batch_stride = c.blocks_per_seq;
  p.page_block_size = kPage;
  p.tile_scheduler_metadata_ptr = c.meta;
  p.num_sm_parts = c.num_sm_parts;
  p.num_splits_ptr = c.num_splits;
  p.total_num_splits = c.batch + c.num_sm_parts;
  p.softmax_lseaccum_ptr = c.lse_accum;
  p.oaccum_ptr = c.o_accum;
  p.stream = bench.stream;
  sm90::run_flash_splitkv_mla_kernel<cutlass::bfloat16_t>(p);

  CombineParams m{};
  m.b = c.batch;
  m.s_q = 1;
  m.h_q = h;
  m.d_v = kDv;
  m.lse = c.lse;
  m.out = c.out;
  m.stride_lse_b = h;
  m.stride_lse_s_q = h;
  m.stride_o_b = h * kDv;
  m.stride_o_s_q = h * kDv;
  m.stride_o_h_q = kDv;
  m.lse_accum = c.lse_accum;
  m.o_accum = c.o_accum;
  m.stride_lse_accum_split = h;
  m.stride_lse_accum_s_q = h;
  m.stride_o_accum_split = h * kDv;
  m.stride_o_accum_s_q = h * kDv;
  m.stride_o_accum_h_q = kDv;
  m.tile_scheduler_metadata_ptr = c.meta;
  m.num_splits_ptr = c.num_splits;
  m.num_sm_parts = c.num_sm_parts;
  m.attn_sink = nullptr;
  m.stream = bench.stream;
  smxx::decode::run_flash_mla_combine_kernel<cutlass::bfloat16_t>(m);
}

// ---------------------------------------------------------------- timing
template <typename F>
double TimeMs(cudaStream_t s, int iters, F&& f) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  CK(cudaEventRecord(a, s));
  for (int i = 0; i < iters; ++i) f(i);
  CK(cudaEventRecord(b, s));
  CK(cudaEventSynchronize(b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return ms / iters;
}

double Median3(double a, double b, double c) { return std::max(std::min(a, b), std::min(std::max(a, b), c)); }

// Stream-launched calls: warm-up, estimate, then 3 repetitions; median us per call.
double TimeCallsUs(const Bench& bench, Case& c, double target_ms, int* iters_out) {
  for (int i = 0; i < 3; ++i) RunCall(bench, c, i % c.replicas);
  CK(cudaStreamSynchronize(bench.stream));
  double est = TimeMs(bench.stream, 5, [&](int i) { RunCall(bench, c, i % c.replicas); });
  int iters = static_cast<int>(std::clamp(target_ms / std::max(est, 1e-4), 10.0, 5000.0));
  double t[3];
  for (double& x : t) x = TimeMs(bench.stream, iters, [&](int i) { RunCall(bench, c, i % c.replicas); });
  CK(cudaGetLastError());
  *iters_out = iters;
  return 1e3 * Median3(t[0], t[1], t[2]);
}

// The same calls captured in a CUDA graph (G calls per graph), replayed.
double TimeGraphUs(const Bench& bench, Case& c, int iters) {
  const int g = std::clamp(iters, 10, 200);
  const int reps = std::max(1, iters / g);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(bench.stream, cudaStreamCaptureModeRelaxed));
  for (int i = 0; i < g; ++i) RunCall(bench, c, i % c.replicas);
  CK(cudaStreamEndCapture(bench.stream, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  CK(cudaGraphLaunch(exec, bench.stream));  // warm-up
  CK(cudaStreamSynchronize(bench.stream));
  double t[3];
  for (double& x : t) x = TimeMs(bench.stream, reps, [&](int) { CK(cudaGraphLaunch(exec, bench.stream)); });
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  return 1e3 * Median3(t[0], t[1], t[2]) / g;
}

// ---------------------------------------------------------------- correctness
struct CheckResult {
  double rel_l2 = 0, max_abs = 0, max_ref = 0, lse_max_abs = 0;
};

CheckResult CompareWithReference(const Bench& bench, const Case& c) {
  const int b = c.batch, h = c.heads;
  // Copy back the blocks the case uses (replica 0) and the queries.
  std::vector<uint16_t> q(static_cast<size_t>(b) * h * kD), out(static_cast<size_t>(b) * h * kDv);
  std::vector<float> lse(static_cast<size_t>(b) * h);
  CK(cudaMemcpy(q.data(), c.q, q.size() * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(out.data(), c.out, out.size() * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(lse.data(), c.lse, lse.size() * 4, cudaMemcpyDeviceToHost));
  const int64_t blocks = static_cast<int64_t>(b) * c.blocks_per_seq;
  std::vector<uint16_t> kv(static_cast<size_t>(blocks) * kPage * kD);
  CK(cudaMemcpy(kv.data(), bench.pool, kv.size() * 2, cudaMemcpyDeviceToHost));  // replica 0 = blocks [0, blocks)

  std::vector<double> err2(b * h), ref2(b * h), max_abs(b * h), max_ref(b * h), lse_err(b * h);
  auto work = [&](int bh) {
    const int bi = bh / h, hi = bh % h;
    const int len = c.seqlens[bi];
    std::vector<float> qf(kD), s(len), acc(kDv, 0.0);
    for (int d = 0; d < kD; ++d) qf[d] = Bf16ToFloat(q[(static_cast<size_t>(bi) * h + hi) * kD + d]);
    auto row = [&](int t) {
      int blk = c.host_block_table[static_cast<size_t>(bi) * c.blocks_per_seq + t / kPage];
      return kv.data() + (static_cast<size_t>(blk) * kPage + t % kPage) * kD;
    };
    float m = -INFINITY;
    for (int t = 0; t < len; ++t) {
      const uint16_t* k = row(t);
      float dot = 0;
      for (int d = 0; d < kD; ++d) dot += qf[d] * Bf16ToFloat(k[d]);
      s[t] = dot * bench.scale;
      m = std::max(m, s[t]);
    }
    double l = 0;
    std::vector<double> o(kDv, 0.0);
    for (int t = 0; t < len; ++t) {
      const double pt = std::exp(static_cast<double>(s[t]) - m);
      l += pt;
      const uint16_t* k = row(t);
      for (int d = 0; d < kDv; ++d) o[d] += pt * Bf16ToFloat(k[d]);
    }
    double e2 = 0, r2 = 0, ma = 0, mr = 0;
    for (int d = 0; d < kDv; ++d) {
      const double ref = o[d] / l;
      const double got = Bf16ToFloat(out[(static_cast<size_t>(bi) * h + hi) * kDv + d]);
      e2 += (got - ref) * (got - ref);
      r2 += ref * ref;
      ma = std::max(ma, std::fabs(got - ref));
      mr = std::max(mr, std::fabs(ref));
    }
    err2[bh] = e2;
    ref2[bh] = r2;
    max_abs[bh] = ma;
    max_ref[bh] = mr;
    const double lse_ref = m + std::log(l);
    lse_err[bh] = std::fabs(lse[static_cast<size_t>(bi) * h + hi] - lse_ref);
  };
  const int n = b * h;
  const int nt = std::max(1u, std::min(32u, std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  for (int t = 0; t < nt; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < n; i += nt) work(i);
    });
  }
  for (auto& t : threads) t.join();
  CheckResult r;
  double e2 = 0, r2 = 0;
  for (int i = 0; i < n; ++i) {
    e2 += err2[i];
    r2 += ref2[i];
    r.max_abs = std::max(r.max_abs, max_abs[i]);
    r.max_ref = std::max(r.max_ref, max_ref[i]);
    r.lse_max_abs = std::max(r.lse_max_abs, lse_err[i]);
  }
  r.rel_l2 = std::sqrt(e2 / std::max(r2, 1e-300));
  return r;
}

bool CheckOne(Bench& bench, int heads, const std::vector<int>& seqlens, bool graph, const char* what) {
  Case c;
  SetupCase(bench, c, static_cast<int>(seqlens.size()), heads, seqlens, 1, 1234 + heads);
  RunMetadata(bench, c);
  bool ok = true;
  for (int mode = 0; mode < (graph ? 2 : 1); ++mode) {
    CK(cudaMemsetAsync(c.out, 0xff, static_cast<size_t>(c.batch) * heads * kDv * sizeof(bf16), bench.stream));
    CK(cudaMemsetAsync(c.lse, 0xff, static_cast<size_t>(c.batch) * heads * sizeof(float), bench.stream));
    if (mode == 0) {
      RunCall(bench, c, 0);
    } else {
      cudaGraph_t g;
      cudaGraphExec_t e;
      CK(cudaStreamBeginCapture(bench.stream, cudaStreamCaptureModeRelaxed));
      RunCall(bench, c, 0);
      CK(cudaStreamEndCapture(bench.stream, &g));
      CK(cudaGraphInstantiate(&e, g, 0));
      CK(cudaGraphLaunch(e, bench.stream));
      CK(cudaStreamSynchronize(bench.stream));
      CK(cudaGraphExecDestroy(e));
      CK(cudaGraphDestroy(g));
    }
    CK(cudaStreamSynchronize(bench.stream));
    CheckResult r = CompareWithReference(bench, c);
    const bool pass = r.rel_l2 < 1e-2 && r.lse_max_abs < 1e-2;
    ok = ok && pass;
    printf("check %-6s %-26s heads=%3d batch=%3d: out rel L2 err %.2e (max abs err %.2e, max |ref| %.2e), "
           "lse max abs err %.2e: %s\n",
           mode ? "graph" : "stream", what, heads, c.batch, r.rel_l2, r.max_abs, r.max_ref, r.lse_max_abs,
           pass ? "PASS" : "FAIL");
    fflush(stdout);
  }
  FreeCase(c);
  return ok;
}

// ---------------------------------------------------------------- copy and GEMM
double CopyTbps(cudaStream_t s) {
  const size_t bytes = size_t{1} << 30;
  void *a, *b;
  CK(cudaMalloc(&a, bytes));
  CK(cudaMalloc(&b, bytes));
  CK(cudaMemsetAsync(a, 1, bytes, s));
  for (int i = 0; i < 3; ++i) CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s));
  double ms = TimeMs(s, 20, [&](int) { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s)); });
  CK(cudaFree(a));
  CK(cudaFree(b));
  return 2.0 * bytes / (ms * 1e-3) / 1e12;
}

double GemmTflops(cudaStream_t s, std::string* note) {
  void* lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) lib = dlopen("libcublas.so", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    *note = std::string("cuBLAS not loaded: ") + dlerror();
    return 0;
  }
  auto create = reinterpret_cast<decltype(&cublasCreate_v2)>(dlsym(lib, "cublasCreate_v2"));
  auto set_stream = reinterpret_cast<decltype(&cublasSetStream_v2)>(dlsym(lib, "cublasSetStream_v2"));
  using GemmFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                    const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                                    cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
  auto gemm = reinterpret_cast<GemmFn>(dlsym(lib, "cublasGemmEx"));
  auto destroy = reinterpret_cast<decltype(&cublasDestroy_v2)>(dlsym(lib, "cublasDestroy_v2"));
  if (!create || !set_stream || !gemm || !destroy) {
    *note = "cuBLAS symbols missing";
    return 0;
  }
  cublasHandle_t handle;
  if (create(&handle) != CUBLAS_STATUS_SUCCESS) {
    *note = "cublasCreate failed";
    return 0;
  }
  set_stream(handle, s);
  const int n = 8192;
  bf16 *a, *b, *c;
  const size_t elems = static_cast<size_t>(n) * n;
  CK(cudaMalloc(&a, elems * 2));
  CK(cudaMalloc(&b, elems * 2));
  CK(cudaMalloc(&c, elems * 2));
  Fill(a, elems, 1, s);
  Fill(b, elems, 2, s);
  const float alpha = 1, beta = 0;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  auto run = [&](int) {
    cublasStatus_t x = gemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n,
                            &beta, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (x != CUBLAS_STATUS_SUCCESS) st = x;
  };
  for (int i = 0; i < 3; ++i) run(i);
  double ms = TimeMs(s, 10, run);
  CK(cudaFree(a));
  CK(cudaFree(b));
  CK(cudaFree(c));
  destroy(handle);
  if (st != CUBLAS_STATUS_SUCCESS) {
    *note = "cublasGemmEx failed: status " + std::to_string(static_cast<int>(st));
    return 0;
  }
  *note = "cuBLAS bf16 8192x8192x8192, fp32 compute, random data";
  return 2.0 * n * n * static_cast<double>(n) / (ms * 1e-3) / 1e12;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = ParseOptions(argc, argv);
  Bench bench;
  bench.scale = static_cast<float>(opt.softmax_scale);
  int dev = 0;
  CK(cudaSetDevice(dev));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, dev));
  bench.num_sms = prop.multiProcessorCount;
  int driver = 0, runtime = 0;
  CK(cudaDriverGetVersion(&driver));
  CK(cudaRuntimeGetVersion(&runtime));
  printf("device: %s, sm_%d%d, %d SMs, %.1f GiB, L2 %.0f MB, driver API %d, runtime %d\n", prop.name, prop.major,
         prop.minor, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, prop.l2CacheSize / 1e6, driver,
         runtime);
  if (prop.major != 9 || prop.minor != 0) {
    fprintf(stderr, "FlashMLA's dense decode needs sm_90a (Hopper); this is sm_%d%d\n", prop.major, prop.minor);
    return 1;
  }
  CK(cudaStreamCreateWithFlags(&bench.stream, cudaStreamNonBlocking));

  // Shapes that fit, and the cache pool they need (largest shape, and room to rotate).
  struct Shape { int heads, batch, context; };
  std::vector<Shape> shapes, skipped;
  int64_t pool_blocks = 2048;  // enough for the correctness checks
  for (int h : opt.heads) {
    for (int b : opt.batches) {
      for (int ctx : opt.contexts) {
        const int64_t blocks = static_cast<int64_t>(b) * ((ctx + kPage - 1) / kPage);
        const double gb = blocks * kPage * kD * 2.0 / 1e9;
        if (gb > opt.max_cache_gb) {
          skipped.push_back({h, b, ctx});
          continue;
        }
        shapes.push_back({h, b, ctx});
        pool_blocks = std::max(pool_blocks, blocks);
      }
    }
  }
  if (opt.check_only) {
    shapes.clear();
    pool_blocks = 2048;
  }

  // Copy and GEMM first (before the pool takes the memory).
  std::string gemm_note;
  const double copy_tbps = CopyTbps(bench.stream);
  const double gemm_tflops = GemmTflops(bench.stream, &gemm_note);
  printf("device-to-device copy: %.3f TB/s (read + write, 1 GiB)\n", copy_tbps);
  printf("GEMM: %.1f TFLOP/s (%s)\n", gemm_tflops, gemm_note.c_str());
  fflush(stdout);

  bench.pool_blocks = pool_blocks;
  const size_t pool_elems = static_cast<size_t>(pool_blocks) * kPage * kD;
  CK(cudaMalloc(&bench.pool, pool_elems * sizeof(bf16)));
  Fill(bench.pool, pool_elems, 42, bench.stream);
  CK(cudaStreamSynchronize(bench.stream));
  printf("cache pool: %lld blocks of 64 x 576 bf16 (%.2f GB)\n", (long long)pool_blocks, pool_elems * 2 / 1e9);

  bool ok = true;
  if (opt.check) {
    for (int h : opt.heads) {
      ok &= CheckOne(bench, h, {64, 777, 2113, 4096}, opt.graph, "split (4 long, ragged)");
      std::vector<int> many(133);
      for (int i = 0; i < 133; ++i) many[i] = (i * 37) % 100 + 1;
      ok &= CheckOne(bench, h, many, opt.graph, "no split (133 short)");
    }
    if (!ok) {
      fprintf(stderr, "FlashMLA correctness check FAILED\n");
      return 1;
    }
  }

  FILE* csv = nullptr;
  if (!opt.csv.empty()) {
    csv = fopen(opt.csv.c_str(), "w");
    if (csv == nullptr) {
      fprintf(stderr, "cannot write %s\n", opt.csv.c_str());
      return 1;
    }
    fprintf(csv, "# device=%s sms=%d copy_tbps=%.3f gemm_tflops=%.1f softmax_scale=%.6f rotate_mb=%.0f\n",
            prop.name, bench.num_sms, copy_tbps, gemm_tflops, opt.softmax_scale, opt.rotate_mb);
    fprintf(csv,
            "baseline,heads,batch,context,cache_gb,num_sm_parts,replicas,iters,us_per_call,tbps,tflops,us_graph,"
            "tbps_graph,tflops_graph,us_meta\n");
    for (const Shape& s : skipped) {
      fprintf(csv, "flashmla,%d,%d,%d,,,,,skipped(cache>%.0fGB),,,,,,\n", s.heads, s.batch, s.context,
              opt.max_cache_gb);
    }
    fflush(csv);
  }
  for (const Shape& s : skipped) {
    printf("skip heads=%d batch=%d context=%d: cache above %.0f GB\n", s.heads, s.batch, s.context, opt.max_cache_gb);
  }

  if (!shapes.empty()) {
    printf("\n%6s %6s %8s %9s %6s %4s %10s %8s %8s %10s %8s %8s %8s\n", "heads", "batch", "context", "cache_GB",
           "splits", "rot", "us/call", "TB/s", "TFLOP/s", "us/graph", "TB/s", "TFLOP/s", "us_meta");
  }
  uint64_t seed = 7;
  for (const Shape& s : shapes) {
    const int64_t blocks = static_cast<int64_t>(s.batch) * ((s.context + kPage - 1) / kPage);
    const double cache_bytes = static_cast<double>(blocks) * kPage * kD * 2;
    int replicas = static_cast<int>(std::ceil(opt.rotate_mb * 1048576.0 / cache_bytes));
    replicas = static_cast<int>(std::clamp<int64_t>(replicas, 1, pool_blocks / blocks));
    Case c;
    SetupCase(bench, c, s.batch, s.heads, std::vector<int>(s.batch, s.context), replicas, seed++);
    RunMetadata(bench, c);
    CK(cudaStreamSynchronize(bench.stream));
    const double meta_us =
        1e3 * TimeMs(bench.stream, 20, [&](int) { RunMetadata(bench, c); });
    int iters = 0;
    const double us = TimeCallsUs(bench, c, opt.target_ms, &iters);
    const double us_graph = opt.graph ? TimeGraphUs(bench, c, iters) : NAN;
    const double bytes = static_cast<double>(s.batch) * s.context * kD * 2 +
                         static_cast<double>(s.batch) * s.heads * (kD + kDv) * 2;
    const double flops = 2.0 * s.heads * (kD + kDv) * static_cast<double>(s.batch) * s.context;
    const double tbps = bytes / (us * 1e-6) / 1e12, tflops = flops / (us * 1e-6) / 1e12;
    const double tbps_g = bytes / (us_graph * 1e-6) / 1e12, tflops_g = flops / (us_graph * 1e-6) / 1e12;
    printf("%6d %6d %8d %9.3f %6d %4d %10.1f %8.3f %8.1f %10.1f %8.3f %8.1f %8.1f\n", s.heads, s.batch, s.context,
           cache_bytes / 1e9, c.num_sm_parts, replicas, us, tbps, tflops, us_graph, tbps_g, tflops_g, meta_us);
    fflush(stdout);
    if (csv) {
      fprintf(csv, "flashmla,%d,%d,%d,%.4f,%d,%d,%d,%.2f,%.4f,%.2f,%.2f,%.4f,%.2f,%.2f\n", s.heads, s.batch, s.context,
              cache_bytes / 1e9, c.num_sm_parts, replicas, iters, us, tbps, tflops, us_graph, tbps_g, tflops_g,
              meta_us);
      fflush(csv);
    }
    FreeCase(c);
  }
  if (csv) fclose(csv);
  CK(cudaFree(bench.pool));
  CK(cudaStreamDestroy(bench.stream));
  printf("done\n");
  return ok ? 0 : 1;
}
