#include "kernels/cpu/fp8_rows.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "common/dtype.h"
#include "kernels/tensor.h"

namespace mlaserve {
namespace {

const std::array<float, 256>& Fp8Values() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> values;
    for (int i = 0; i < 256; ++i) values[i] = F8E4M3ToF32(static_cast<uint8_t>(i));
    return values;
  }();
  return table;
}

}  // namespace

void QuantizeFp8Row(const float* x, int64_t k, uint8_t* q, float* scale) {
  for (int64_t g = 0; g * kFp8ScaleGroup < k; ++g) {
    const int64_t begin = g * kFp8ScaleGroup, end = std::min(k, begin + kFp8ScaleGroup);
    float amax = 0.0f;
    for (int64_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float s = std::max(amax, 1e-4f) / 448.0f;
    for (int64_t i = begin; i < end; ++i) q[i] = F32ToF8E4M3(x[i] / s);
    scale[g] = s;
  }
}

float Fp8RowDot(const uint8_t* qx, const float* sx, const uint8_t* qw, const float* sw, int64_t k) {
  const std::array<float, 256>& value = Fp8Values();
  float acc = 0.0f;
  for (int64_t g = 0; g * kFp8ScaleGroup < k; ++g) {
    const int64_t begin = g * kFp8ScaleGroup, end = std::min(k, begin + kFp8ScaleGroup);
    float part = 0.0f;
    for (int64_t i = begin; i < end; ++i) part += value[qx[i]] * value[qw[i]];
    acc = std::fma(part, sx[g] * sw[g], acc);
  }
  return acc;
}

}  // namespace mlaserve
