// RMSNorm on Hopper, bf16 in and out, float32 accumulation: one block per row.
// The fused form adds the sublayer output into the residual stream first, so
// the residual is read and written once (as every decoder layer needs).
#ifndef MLASERVE_KERNELS_CUDA_RMS_NORM_H_
#define MLASERVE_KERNELS_CUDA_RMS_NORM_H_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace mlaserve::cuda {

// out[r] = x[r] / rms(x[r]) * weight, for `rows` rows of `dim` values.
cudaError_t RmsNorm(const __nv_bfloat16* x, const __nv_bfloat16* weight, float eps, int rows, int dim,
                    __nv_bfloat16* out, cudaStream_t stream);

// residual += x (rounded to bf16, as the residual stream is stored), then
// out = RmsNorm(residual).
cudaError_t AddRmsNorm(__nv_bfloat16* residual, const __nv_bfloat16* x, const __nv_bfloat16* weight, float eps,
                       int rows, int dim, __nv_bfloat16* out, cudaStream_t stream);

}  // namespace mlaserve::cuda

#endif  // MLASERVE_KERNELS_CUDA_RMS_NORM_H_
