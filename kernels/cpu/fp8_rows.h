// The FP8 product of Ops::Linear (kernels/ops.h) on the host: the CPU
// reference computes FP8 weights by this rule, and the CUDA kernels
// (kernels/cuda/grouped_gemm.h) follow it.
#ifndef MLASERVE_KERNELS_CPU_FP8_ROWS_H_
#define MLASERVE_KERNELS_CPU_FP8_ROWS_H_

#include <cstdint>

namespace mlaserve {

// q[0, k) and scale[0, Fp8Groups(k)) of the row x[0, k): per 128-column
// group, scale = max(amax, 1e-4) / 448 and q = e4m3(x / scale), ties to even.
void QuantizeFp8Row(const float* x, int64_t k, uint8_t* q, float* scale);

// Sum over the 128-column groups g of (sum over k in g of qx[k] qw[k]) *
// (sx[g] * sw[g]), each group's sum in float32 in k order.
float Fp8RowDot(const uint8_t* qx, const float* sx, const uint8_t* qw, const float* sw, int64_t k);

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_CPU_FP8_ROWS_H_
