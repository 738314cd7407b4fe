// Shared pieces of the CUDA benchmark binaries: list flags, bf16 random
// fills, timing with CUDA events, and the reference rates each run measures
// beside its own figures (a device-to-device copy, a cuBLAS bf16 GEMM).
#ifndef MLASERVE_KERNELS_CUDA_BENCH_UTIL_H_
#define MLASERVE_KERNELS_CUDA_BENCH_UTIL_H_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/bench_checks.h"
#include "kernels/tensor.h"

namespace mlaserve {

// The value of `arg` when it is `name` followed by it ("--heads=" in
// "--heads=16,128"), else null.
inline const char* FlagValue(const std::string& arg, const char* name) {
  const size_t n = std::char_traits<char>::length(name);
  return arg.compare(0, n, name) == 0 ? arg.c_str() + n : nullptr;
}

// "1,2,4" -> {1, 2, 4}.
inline std::vector<int> ParseList(const std::string& s) {
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

// Fills n bf16 values with copies of a 32 MiB block of uniform [-1, 1) values.
inline void FillUniformBf16(void* dst, size_t n, uint64_t seed, cudaStream_t s) {
  static void* source = nullptr;
  constexpr size_t kSourceElems = size_t{16} << 20;
  if (source == nullptr) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    std::vector<uint16_t> bits(kSourceElems);
    for (uint16_t& b : bits) b = F32ToBf16(d(rng));
    CK(cudaMalloc(&source, kSourceElems * 2));
    CK(cudaMemcpy(source, bits.data(), kSourceElems * 2, cudaMemcpyHostToDevice));
  }
  // Start each fill at a seed-dependent offset so that different buffers differ.
  size_t offset = (seed * 7919) % (kSourceElems / 2);
  for (size_t done = 0; done < n;) {
    const size_t count = std::min(n - done, kSourceElems - offset);
    CK(cudaMemcpyAsync(static_cast<uint16_t*>(dst) + done, static_cast<uint16_t*>(source) + offset, count * 2,
                       cudaMemcpyDeviceToDevice, s));
    done += count;
    offset = 0;
  }
}

inline Tensor DeviceBf16View(void* data, std::vector<int64_t> shape) {
  Tensor t;
  t.dtype = DType::kBF16;
  t.device = Device::kCuda;
  t.shape = std::move(shape);
  t.data = data;
  return t;
}

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

inline double Median3(double a, double b, double c) { return std::max(std::min(a, b), std::min(std::max(a, b), c)); }

inline double CopyTbps(cudaStream_t s) {
  const size_t bytes = size_t{1} << 30;
  void *a, *b;
  CK(cudaMalloc(&a, bytes));
  CK(cudaMalloc(&b, bytes));
  FillUniformBf16(a, bytes / 2, 3, s);
  for (int i = 0; i < 3; ++i) CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s));
  double t[3];
  for (double& x : t) x = TimeMs(s, 20, [&](int) { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s)); });
  CK(cudaFree(a));
  CK(cudaFree(b));
  return 2.0 * bytes / (Median3(t[0], t[1], t[2]) * 1e-3) / 1e12;
}

inline double GemmTflops(cudaStream_t s) {
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) return 0;
  cublasSetStream(handle, s);
  const int n = 8192;
  const size_t elems = static_cast<size_t>(n) * n;
  void *a, *b, *c;
  CK(cudaMalloc(&a, elems * 2));
  CK(cudaMalloc(&b, elems * 2));
  CK(cudaMalloc(&c, elems * 2));
  FillUniformBf16(a, elems, 1, s);
  FillUniformBf16(b, elems, 2, s);
  const float alpha = 1, beta = 0;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  auto run = [&](int) {
    cublasStatus_t x = cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b,
                                    CUDA_R_16BF, n, &beta, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (x != CUBLAS_STATUS_SUCCESS) st = x;
  };
  for (int i = 0; i < 3; ++i) run(i);
  double t[3];
  for (double& x : t) x = TimeMs(s, 10, run);
  CK(cudaFree(a));
  CK(cudaFree(b));
  CK(cudaFree(c));
  cublasDestroy(handle);
  if (st != CUBLAS_STATUS_SUCCESS) return 0;
  return 2.0 * n * n * static_cast<double>(n) / (Median3(t[0], t[1], t[2]) * 1e-3) / 1e12;
}

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_CUDA_BENCH_UTIL_H_
