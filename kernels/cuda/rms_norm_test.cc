// RMSNorm kernels on the GPU against the CPU reference ops (bf16 tolerance).
#include "kernels/cuda/rms_norm.h"

#include <cmath>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/ops.h"

namespace mlaserve {
namespace {

// Device buffer of bf16 values rounded from `host` (host keeps the rounded values).
struct DeviceBf16 {
  explicit DeviceBf16(std::vector<float>& host) : n(host.size()) {
    std::vector<uint16_t> bits(n);
    for (size_t i = 0; i < n; ++i) {
      bits[i] = F32ToBf16(host[i]);
      host[i] = Bf16ToF32(bits[i]);
    }
    EXPECT_EQ(cudaMalloc(&ptr, n * 2), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(ptr, bits.data(), n * 2, cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceBf16() { cudaFree(ptr); }
  std::vector<float> ToHost() const {
    std::vector<uint16_t> bits(n);
    EXPECT_EQ(cudaMemcpy(bits.data(), ptr, n * 2, cudaMemcpyDeviceToHost), cudaSuccess);
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = Bf16ToF32(bits[i]);
    return out;
  }
  __nv_bfloat16* get() const { return static_cast<__nv_bfloat16*>(ptr); }
  void* ptr = nullptr;
  size_t n;
};

double RelErr(const std::vector<float>& out, const std::vector<float>& ref) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    diff += (out[i] - ref[i]) * double(out[i] - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return std::sqrt(diff / norm);
}

std::vector<float> Random(size_t n, std::mt19937& rng, float mean = 0) {
  std::normal_distribution<float> d(mean, 1);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<float> CpuRmsNorm(const std::vector<float>& x, const std::vector<float>& w, int rows, int dim) {
  auto ops = NewCpuOps();
  Tensor tx = *ops->Empty(DType::kF32, {rows, dim}), tw = *ops->Empty(DType::kF32, {dim});
  Tensor out = *ops->Empty(DType::kF32, {rows, dim});
  EXPECT_TRUE(ops->Upload(x, &tx).ok());
  EXPECT_TRUE(ops->Upload(w, &tw).ok());
  EXPECT_TRUE(ops->RmsNorm(tx, tw, 1e-6f, &out).ok());
  return std::vector<float>(out.as<float>(), out.as<float>() + out.numel());
}

TEST(CudaRmsNormTest, MatchesCpuReference) {
  std::mt19937 rng(std::random_device{}());
  for (auto [rows, dim] : {std::pair{1, 7}, {3, 256}, {17, 7168}, {64, 513}}) {
    std::vector<float> x = Random(rows * dim, rng), w = Random(dim, rng, 1.0f);
    DeviceBf16 dx(x), dw(w);
    std::vector<float> poison(rows * dim, NAN);
    DeviceBf16 dout(poison);
    ASSERT_EQ(cuda::RmsNorm(dx.get(), dw.get(), 1e-6f, rows, dim, dout.get(), nullptr), cudaSuccess);
    EXPECT_LT(RelErr(dout.ToHost(), CpuRmsNorm(x, w, rows, dim)), 1e-2) << rows << "x" << dim;
  }
}

TEST(CudaRmsNormTest, FusedAddMatchesCpuReference) {
  std::mt19937 rng(std::random_device{}());
  const int rows = 9, dim = 2048;
  std::vector<float> residual = Random(rows * dim, rng), x = Random(rows * dim, rng), w = Random(dim, rng, 1.0f);
  DeviceBf16 dres(residual), dx(x), dw(w);
  std::vector<float> poison(rows * dim, NAN);
  DeviceBf16 dout(poison);
  ASSERT_EQ(cuda::AddRmsNorm(dres.get(), dx.get(), dw.get(), 1e-6f, rows, dim, dout.get(), nullptr), cudaSuccess);
  std::vector<float> sum(rows * dim);
  for (int i = 0; i < rows * dim; ++i) sum[i] = residual[i] + x[i];
  EXPECT_LT(RelErr(dres.ToHost(), sum), 1e-2);
  EXPECT_LT(RelErr(dout.ToHost(), CpuRmsNorm(sum, w, rows, dim)), 1e-2);
}

}  // namespace
}  // namespace mlaserve
