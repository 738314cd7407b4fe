// The FP8 GEMMs of the CUDA backend (kernels/cuda/grouped_gemm.h) at
// DeepSeek-V3 shapes, beside their limits measured in the same run:
//   - HBM: a device-to-device copy (read + write bytes per second);
//   - the matrix rate: cuBLASLt's dense FP8 GEMM (e4m3, one scale per tensor,
//     its own heuristic choice, workspace allowed) at 8192^3, and bf16 at the same size;
//   - cuBLASLt's DeepSeek-style block-scaled FP8 (VEC128 activations x
//     BLK128x128 weights), tried at each dense shape: rate, or why it refuses.
// Per shape and token count: time (CUDA events, median of 3 runs of >= 20 ms
// after warm-up), TFLOP/s, and weight GB/s (FP8 weight bytes + scales read
// once per call / time). Dense shapes: V3's attention and dense-MLP
// projections. Grouped: V3's routed experts (256 of [4096 x 7168] gate_up and
// [7168 x 2048] down, and the 32 of one EP8 rank), 8 experts per token chosen
// uniformly at random; FLOPs count the local pairs' work only, bytes the
// experts actually touched.
//
// First, a probe: which scale layout cuBLASLt's VEC128 x VEC128 mode reads.
//
//   fp8_gemm_bench [--tokens=1,16,64,256,4096,16384] [--csv=PATH] [--probe_only]
// CSV goes to --csv, else to $OUT/fp8_gemm.csv when OUT is set.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernels/cuda/bench_checks.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/moe.h"
#include "kernels/ops.h"

namespace mlaserve::cuda {
namespace {

void* Alloc(size_t bytes) {
  void* p = nullptr;
  CK(cudaMalloc(&p, std::max<size_t>(bytes, 256)));
  return p;
}

// An FP8 operand of `rows` x `k` for timing: every value 1.0 (e4m3 0x38),
// every scale 0.75 (0x3f3f3f3f); the MMAs' time does not depend on the data.
Fp8Operand Filled(int64_t rows, int64_t k) {
  auto* q = static_cast<uint8_t*>(Alloc(rows * k));
  auto* s = static_cast<float*>(Alloc(rows * ((k + 127) / 128) * 4));
  CK(cudaMemset(q, 0x38, rows * k));
  CK(cudaMemset(s, 0x3f, rows * ((k + 127) / 128) * 4));
  return {q, s};
}

// Median over 3 runs of the mean time of `call` (ms), each run >= 20 ms.
double TimeMs(const std::function<void()>& call) {
  for (int i = 0; i < 3; ++i) call();
  CK(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  CK(cudaEventCreate(&start));
  CK(cudaEventCreate(&stop));
  CK(cudaEventRecord(start));
  call();
  CK(cudaEventRecord(stop));
  CK(cudaEventSynchronize(stop));
  float one = 0;
  CK(cudaEventElapsedTime(&one, start, stop));
  const int iters = std::max(3, std::min(2000, static_cast<int>(20.0 / std::max(one, 1e-3f))));
  std::vector<double> runs;
  for (int r = 0; r < 3; ++r) {
    CK(cudaEventRecord(start));
    for (int i = 0; i < iters; ++i) call();
    CK(cudaEventRecord(stop));
    CK(cudaEventSynchronize(stop));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, start, stop));
    runs.push_back(ms / iters);
  }
  CK(cudaGetLastError());
  std::sort(runs.begin(), runs.end());
  return runs[1];
}

// One cuBLASLt "TN" GEMM D[m, n] = A^T B (A k x m, B k x n column-major,
// D bf16 m x n) of e4m3 or bf16 operands, FP8 scales read through `a_scale` /
// `b_scale` in the given modes (kNoScaleMode: one scalar each), and the best
// algorithm for at most `workspace_bytes`; `found` is false when cuBLASLt
// has none, the reason printed with `what`.
constexpr int32_t kNoScaleMode = -1;
struct LtGemm {
  LtGemm(cublasLtHandle_t lt, int64_t m, int64_t n, int64_t k, bool fp8, int32_t a_mode, int32_t b_mode,
         const float* a_scale, const float* b_scale, size_t workspace_bytes, const char* what)
      : lt(lt), workspace_bytes(workspace_bytes) {
    const cudaDataType_t in = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    const cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof(nn));
    if (fp8) {
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof(a_scale));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof(b_scale));
    }
    if (a_mode != kNoScaleMode) cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof(a_mode));
    if (b_mode != kNoScaleMode) cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof(b_mode));
    cublasLtMatrixLayoutCreate(&la, in, k, m, k);
    cublasLtMatrixLayoutCreate(&lb, in, k, n, k);
    cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, m, n, m);
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                         sizeof(workspace_bytes));
    int count = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, ld, ld, pref, 1, &result, &count);
    cublasLtMatmulPreferenceDestroy(pref);
    found = status == CUBLAS_STATUS_SUCCESS && count > 0;
    if (!found) {
      printf("  cuBLASLt %s %ldx%ldx%ld: no algorithm (%s)\n", what, long(m), long(n), long(k),
             status == CUBLAS_STATUS_SUCCESS ? "none returned" : cublasLtGetStatusString(status));
    }
  }
  ~LtGemm() {
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(op);
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;
  cublasStatus_t Run(const void* a, const void* b, void* d, void* workspace) const {
    const float alpha = 1, beta = 0;
    return cublasLtMatmul(lt, op, &alpha, a, la, b, lb, &beta, d, ld, d, ld, &result.algo, workspace,
                          workspace_bytes, nullptr);
  }

  cublasLtHandle_t lt;
  size_t workspace_bytes;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulHeuristicResult_t result{};
  bool found = false;
};

// Times cuBLASLt D[m, n] = A^T B on filled operands, e4m3 or bf16; with
// `block_scaled`, A (the weight) BLK128x128 and B (the activations) VEC128
// float scales. Returns ms per call, or a negative number when cuBLASLt has no
// algorithm or fails (reason printed).
double CublasLt(cublasLtHandle_t lt, int64_t m, int64_t n, int64_t k, bool fp8, bool block_scaled,
                const char* what) {
  const size_t element = fp8 ? 1 : 2;
  void* a = Alloc(m * k * element);
  void* b = Alloc(n * k * element);
  void* d = Alloc(m * n * 2);
  // Scale tables padded to whole 128-row tiles either way, whatever layout cuBLASLt reads.
  const size_t a_scale_bytes = ((m + 127) / 128 * 128) * ((k + 127) / 128) * 4;
  const size_t b_scale_bytes = ((k + 127) / 128) * ((n + 127) / 128 * 128) * 4;
  float* a_scale = static_cast<float*>(Alloc(a_scale_bytes));
  float* b_scale = static_cast<float*>(Alloc(b_scale_bytes));
  CK(cudaMemset(a_scale, 0x3f, a_scale_bytes));
  CK(cudaMemset(b_scale, 0x3f, b_scale_bytes));
  CK(cudaMemset(a, 0x11, m * k * element));
  CK(cudaMemset(b, 0x11, n * k * element));
  const size_t workspace_bytes = 64 << 20;
  void* workspace = Alloc(workspace_bytes);
  double ms = -1;
  {
    const LtGemm gemm(lt, m, n, k, fp8, block_scaled ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F : kNoScaleMode,
                      block_scaled ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F : kNoScaleMode, a_scale, b_scale,
                      workspace_bytes, what);
    if (gemm.found) {
      cublasStatus_t run_status = CUBLAS_STATUS_SUCCESS;
      ms = TimeMs([&] {
        const cublasStatus_t s = gemm.Run(a, b, d, workspace);
        if (s != CUBLAS_STATUS_SUCCESS) run_status = s;
      });
      if (run_status != CUBLAS_STATUS_SUCCESS) {
        printf("  cuBLASLt %s %ldx%ldx%ld: matmul failed (%s)\n", what, long(m), long(n), long(k),
               cublasLtGetStatusString(run_status));
        ms = -1;
      }
    }
  }
  for (void* p : {a, b, d, static_cast<void*>(a_scale), static_cast<void*>(b_scale), workspace}) CK(cudaFree(p));
  return ms;
}

// Which scale layouts cuBLASLt's 1x128-by-1x128 block scaling (VEC128_32F on
// both operands) reads, found by multiplying random FP8 operands both ways and
// comparing with DenseGemmFp8 (this backend's kernel, tested against the CPU):
// scales [groups][rows] ("outer-dim major") or [rows][groups] (ours).
void ProbeVec128(cublasLtHandle_t lt) {
  const int64_t m = 576, n = 64, k = 2048, groups = k / 128;
  std::mt19937 rng(3);
  std::vector<uint8_t> a(m * k), b(n * k);
  for (uint8_t& v : a) v = static_cast<uint8_t>(rng() & 0xb7);
  for (uint8_t& v : b) v = static_cast<uint8_t>(rng() & 0xb7);
  std::vector<float> sa(m * groups), sb(n * groups);
  std::uniform_real_distribution<float> scale(0.5f, 2.0f);
  for (float& v : sa) v = scale(rng);
  for (float& v : sb) v = scale(rng);
  auto upload = [](const void* host, size_t bytes) {
    void* d = Alloc(bytes);
    CK(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
    return d;
  };
  auto transpose = [](const std::vector<float>& v, int64_t rows, int64_t cols) {
    std::vector<float> t(v.size());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) t[c * rows + r] = v[r * cols + c];
    return t;
  };
  auto* da = static_cast<uint8_t*>(upload(a.data(), a.size()));
  auto* db = static_cast<uint8_t*>(upload(b.data(), b.size()));
  auto* dsa = static_cast<float*>(upload(sa.data(), sa.size() * 4));
  auto* dsb = static_cast<float*>(upload(sb.data(), sb.size() * 4));
  const std::vector<float> sa_t = transpose(sa, m, groups), sb_t = transpose(sb, n, groups);
  auto* dsa_t = static_cast<float*>(upload(sa_t.data(), sa_t.size() * 4));
  auto* dsb_t = static_cast<float*>(upload(sb_t.data(), sb_t.size() * 4));
  auto* y_ref = static_cast<__nv_bfloat16*>(Alloc(m * n * 2));
  auto* y = static_cast<__nv_bfloat16*>(Alloc(m * n * 2));
  auto* workspace = static_cast<float*>(Alloc(DenseFp8WorkspaceFloats(n, m, k) * 4 + 4));
  CK(DenseGemmFp8({da, dsa}, m, k, {db, dsb}, n, workspace, y_ref, nullptr));
  std::vector<uint16_t> ref(m * n), got(m * n);
  CK(cudaMemcpy(ref.data(), y_ref, ref.size() * 2, cudaMemcpyDeviceToHost));
  auto to_float = [](uint16_t bits) {
    uint32_t w = uint32_t{bits} << 16;
    float f;
    std::memcpy(&f, &w, 4);
    return f;
  };
  for (bool outer_major : {true, false}) {
    const char* layout = outer_major ? "[groups][rows]" : "[rows][groups]";
    const std::string what = std::string("VEC128 x VEC128 probe, ") + layout + " scales,";
    const LtGemm gemm(lt, m, n, k, /*fp8=*/true, CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F,
                      CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F, outer_major ? dsa_t : dsa, outer_major ? dsb_t : dsb,
                      /*workspace_bytes=*/0, what.c_str());
    if (!gemm.found) continue;
    const cublasStatus_t status = gemm.Run(da, db, y, nullptr);
    CK(cudaDeviceSynchronize());
    if (status != CUBLAS_STATUS_SUCCESS) {
      printf("probe: cuBLASLt VEC128 x VEC128 (%s scales): %s\n", layout, cublasLtGetStatusString(status));
      continue;
    }
    CK(cudaMemcpy(got.data(), y, got.size() * 2, cudaMemcpyDeviceToHost));
    double diff = 0, norm = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      const double e = double(to_float(got[i])) - to_float(ref[i]);
      diff += e * e;
      norm += double(to_float(ref[i])) * to_float(ref[i]);
    }
    printf("probe: cuBLASLt VEC128 x VEC128 (%s scales) against DenseGemmFp8: rel err %.3g\n", layout,
           std::sqrt(diff / norm));
  }
  for (void* p : {static_cast<void*>(da), static_cast<void*>(db), static_cast<void*>(dsa), static_cast<void*>(dsb),
                  static_cast<void*>(dsa_t), static_cast<void*>(dsb_t), static_cast<void*>(y_ref), static_cast<void*>(y),
                  static_cast<void*>(workspace)}) {
    CK(cudaFree(p));
  }
}

std::vector<int64_t> ParseList(const char* arg) {
  std::vector<int64_t> out;
  for (const char* p = arg; *p;) {
    out.push_back(std::strtoll(p, const_cast<char**>(&p), 10));
    if (*p == ',') ++p;
  }
  return out;
}

int Main(int argc, char** argv) {
  std::vector<int64_t> tokens_list{1, 16, 64, 256, 4096, 16384};
  bool probe_only = false;
  std::string csv_path = getenv("OUT") != nullptr ? std::string(getenv("OUT")) + "/fp8_gemm.csv" : "";
  for (int i = 1; i < argc; ++i) {
    if (strncmp(argv[i], "--tokens=", 9) == 0) tokens_list = ParseList(argv[i] + 9);
    if (strncmp(argv[i], "--csv=", 6) == 0) csv_path = argv[i] + 6;
    if (strcmp(argv[i], "--probe_only") == 0) probe_only = true;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  FILE* csv = csv_path.empty() ? nullptr : fopen(csv_path.c_str(), "w");
  if (csv) fprintf(csv, "kind,shape,tokens,ms,tflops,weight_gbs,hbm_share,fp8_rate_share\n");

  // Limits.
  const size_t copy_bytes = size_t{2} << 30;
  void* src = Alloc(copy_bytes);
  void* dst = Alloc(copy_bytes);
  const double copy_ms = TimeMs([&] { CK(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice)); });
  const double hbm = 2.0 * copy_bytes / copy_ms / 1e6;  // GB/s
  CK(cudaFree(src));
  CK(cudaFree(dst));
  cublasLtHandle_t lt;
  cublasLtCreate(&lt);
  ProbeVec128(lt);
  if (probe_only) return 0;
  const int64_t big = 8192;
  const double fp8_ms = CublasLt(lt, big, big, big, true, false, "fp8 per-tensor");
  const double bf16_ms = CublasLt(lt, big, big, big, false, false, "bf16");
  const double fp8_rate = 2.0 * big * big * big / fp8_ms / 1e9, bf16_rate = 2.0 * big * big * big / bf16_ms / 1e9;
  printf("limits: copy %.0f GB/s; cuBLASLt dense FP8 %.0f TFLOP/s, bf16 %.0f TFLOP/s (8192^3)\n", hbm, fp8_rate,
         bf16_rate);
  if (csv) {
    fprintf(csv, "copy,2GiB,0,%.4f,0,%.1f,1,0\n", copy_ms, hbm);
    fprintf(csv, "cublaslt_fp8,8192x8192x8192,8192,%.4f,%.1f,0,0,1\n", fp8_ms, fp8_rate);
    fprintf(csv, "cublaslt_bf16,8192x8192x8192,8192,%.4f,%.1f,0,0,%.3f\n", bf16_ms, bf16_rate, bf16_rate / fp8_rate);
  }
  auto report = [&](const char* kind, const std::string& shape, int64_t tokens, double ms, double flops,
                    double weight_bytes) {
    const double tflops = flops / ms / 1e9, gbs = weight_bytes / ms / 1e6;
    printf("%-14s %-22s tokens %5ld: %9.4f ms %7.1f TFLOP/s (%4.0f%% of FP8 rate) %6.0f GB/s weights (%3.0f%% of copy)\n",
           kind, shape.c_str(), long(tokens), ms, tflops, 100 * tflops / fp8_rate, gbs, 100 * gbs / hbm);
    if (csv) {
      fprintf(csv, "%s,%s,%ld,%.5f,%.2f,%.1f,%.4f,%.4f\n", kind, shape.c_str(), long(tokens), ms, tflops, gbs,
              gbs / hbm, tflops / fp8_rate);
    }
  };

  // Dense V3 projections [n, k].
  struct Dense {
    const char* name;
    int64_t n, k;
  };
  const Dense dense[] = {{"q_a", 1536, 7168},     {"q_b", 24576, 1536},    {"kv_a", 576, 7168},
                         {"o_proj", 7168, 16384}, {"mlp_gate_up", 36864, 7168}, {"mlp_down", 7168, 18432}};
  const int64_t max_tokens = *std::max_element(tokens_list.begin(), tokens_list.end());
  auto ops_or = NewCudaOps(0, {.step_graphs = false});
  if (!ops_or.ok()) {
    fprintf(stderr, "%s\n", ops_or.status().ToString().c_str());
    return 1;
  }
  Ops& ops = **ops_or;
  for (const Dense& s : dense) {
    const Fp8Operand w = Filled(s.n, s.k);
    const Fp8Operand x = Filled(max_tokens, s.k);
    auto* y = static_cast<__nv_bfloat16*>(Alloc(max_tokens * s.n * 2));
    auto* workspace = static_cast<float*>(Alloc(DenseFp8WorkspaceFloats(max_tokens, s.n, s.k) * 4));
    const std::string shape = std::string(s.name) + " " + std::to_string(s.n) + "x" + std::to_string(s.k);
    const double weight_bytes = s.n * s.k + s.n * ((s.k + 127) / 128) * 4.0;
    for (int64_t tokens : tokens_list) {
      const double ms = TimeMs([&] { CK(DenseGemmFp8(w, s.n, s.k, x, tokens, workspace, y, nullptr)); });
      report("dense_fp8", shape, tokens, ms, 2.0 * tokens * s.n * s.k, weight_bytes);
      // The op as the model calls it: x quantized, then the GEMM.
      {
        auto w_t = ops.Empty(mlaserve::DType::kF8E4M3, {s.n, s.k});
        auto w_s = ops.Empty(mlaserve::DType::kF32, {s.n, (s.k + 127) / 128});
        auto x_t = ops.Empty(mlaserve::DType::kBF16, {tokens, s.k});
        auto y_t = ops.Empty(mlaserve::DType::kBF16, {tokens, s.n});
        if (!w_t.ok() || !w_s.ok() || !x_t.ok() || !y_t.ok()) return 1;
        CK(cudaMemcpy(w_t->data, w.values, s.n * s.k, cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(w_s->data, w.scale, w_s->num_bytes(), cudaMemcpyDeviceToDevice));
        w_t->scale = std::make_shared<Tensor>(*w_s);
        if (!ops.Fill(&*x_t, 0.5f).ok()) return 1;
        const double op_ms = TimeMs([&] {
          const absl::Status st = ops.Linear(*x_t, *w_t, &*y_t);
          if (!st.ok()) fprintf(stderr, "Linear: %s\n", st.ToString().c_str());
        });
        report("linear_fp8", shape, tokens, op_ms, 2.0 * tokens * s.n * s.k, weight_bytes);
      }
      const double lt_ms = CublasLt(lt, s.n, tokens, s.k, true, true, "block-scaled fp8");
      if (lt_ms > 0) report("cublaslt_block", shape, tokens, lt_ms, 2.0 * tokens * s.n * s.k, weight_bytes);
      const double lt_tensor_ms = CublasLt(lt, s.n, tokens, s.k, true, false, "per-tensor fp8");
      if (lt_tensor_ms > 0) report("cublaslt_tensor", shape, tokens, lt_tensor_ms, 2.0 * tokens * s.n * s.k, weight_bytes);
    }
    for (const void* p : {static_cast<const void*>(w.values), static_cast<const void*>(w.scale),
                          static_cast<const void*>(x.values), static_cast<const void*>(x.scale),
                          static_cast<const void*>(y), static_cast<const void*>(workspace)}) {
      CK(cudaFree(const_cast<void*>(p)));
    }
  }

  // Routed experts, V3: 256 experts, top 8; all of them on one GPU, and the
  // 32 of one rank of EP8 (the pairs routed to them, about one per token).
  const int64_t experts = 256, top_k = 8, hidden = 7168, inner = 2048;
  struct Grouped {
    const char* name;
    int64_t n, k;
  };
  for (const int64_t local : {experts, experts / 8}) {
    for (const Grouped& g :
         {Grouped{"experts_gate_up", 2 * inner, hidden}, Grouped{"experts_down", hidden, inner}}) {
      const Fp8Operand w = Filled(local * g.n, g.k);
      const Fp8Operand x = Filled(max_tokens * top_k, g.k);
      auto* y = static_cast<__nv_bfloat16*>(Alloc(max_tokens * top_k * g.n * 2));
      for (int64_t tokens : tokens_list) {
        std::mt19937 rng(7);
        std::vector<int32_t> ids;
        std::set<int32_t> touched;
        int64_t local_pairs = 0;
        for (int64_t t = 0; t < tokens; ++t) {
          std::vector<int32_t> e(experts);
          for (int32_t i = 0; i < experts; ++i) e[i] = i;
          std::shuffle(e.begin(), e.end(), rng);
          ids.insert(ids.end(), e.begin(), e.begin() + top_k);
          for (int64_t j = 0; j < top_k; ++j) {
            if (e[j] < local) touched.insert(e[j]), ++local_pairs;
          }
        }
        const int64_t pairs = tokens * top_k, tile_pairs = ExpertTilePairs(pairs, local);
        const int64_t max_tiles = MaxExpertTiles(pairs, local, tile_pairs);
        auto* d_ids = static_cast<int32_t*>(Alloc(pairs * 4));
        auto* pair_token = static_cast<int32_t*>(Alloc(pairs * 4));
        auto* pair_of = static_cast<int32_t*>(Alloc(pairs * 4));
        auto* tiles = static_cast<ExpertTile*>(Alloc(max_tiles * sizeof(ExpertTile)));
        auto* num_tiles = static_cast<int32_t*>(Alloc(4));
        CK(cudaMemcpy(d_ids, ids.data(), pairs * 4, cudaMemcpyHostToDevice));
        CK(MoeGroupPairs(d_ids, tokens, top_k, 0, local, tile_pairs, pair_token, pair_of, tiles, num_tiles,
                         nullptr));
        // gate_up gathers the tokens' rows; down reads the pairs' rows in place.
        const int32_t* rows = g.k == hidden ? pair_token : nullptr;
        const double ms = TimeMs([&] {
          CK(GroupedExpertGemmFp8(w, g.n, g.k, x, rows, tile_pairs, tiles, num_tiles, max_tiles, y, nullptr));
        });
        const double weight_bytes = touched.size() * (g.n * g.k + g.n * ((g.k + 127) / 128) * 4.0);
        const std::string shape =
            std::string(g.name) + " " + std::to_string(local) + "x" + std::to_string(g.n) + "x" + std::to_string(g.k);
        report("grouped_fp8", shape, tokens, ms, 2.0 * local_pairs * g.n * g.k, weight_bytes);
        for (void* p : {static_cast<void*>(d_ids), static_cast<void*>(pair_token), static_cast<void*>(pair_of),
                        static_cast<void*>(tiles), static_cast<void*>(num_tiles)}) {
          CK(cudaFree(p));
        }
      }
      for (const void* p : {static_cast<const void*>(w.values), static_cast<const void*>(w.scale),
                            static_cast<const void*>(x.values), static_cast<const void*>(x.scale),
                            static_cast<const void*>(y)}) {
        CK(cudaFree(const_cast<void*>(p)));
      }
    }
  }
  if (csv) fclose(csv);
  cublasLtDestroy(lt);
  return 0;
}

}  // namespace
}  // namespace mlaserve::cuda

int main(int argc, char** argv) { return mlaserve::cuda::Main(argc, argv); }
