#include "kernels/cuda/rms_norm.h"

namespace mlaserve::cuda {
namespace {

constexpr int kThreads = 256;

// Sum over the block: warp shuffles, then one value per warp through shared memory.
__device__ float BlockSum(float value) {
  __shared__ float warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffff, value, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  value = lane < kThreads / 32 ? warp_sums[lane] : 0.0f;
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffff, value, offset);
    if (lane == 0) warp_sums[0] = value;
  }
  __syncthreads();
  return warp_sums[0];
}

// One block per row. With `residual`, the row is residual + x (written back).
__global__ void RmsNormKernel(const __nv_bfloat16* x, __nv_bfloat16* residual, const __nv_bfloat16* weight,
                              float eps, int dim, __nv_bfloat16* out) {
  const size_t row = blockIdx.x;
  const __nv_bfloat16* x_row = x + row * dim;
  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    float v = __bfloat162float(x_row[i]);
    if (residual != nullptr) {
      __nv_bfloat16 sum = __float2bfloat16(__bfloat162float(residual[row * dim + i]) + v);
      residual[row * dim + i] = sum;
      v = __bfloat162float(sum);
    }
    sum_sq += v * v;
  }
  const float inv_rms = rsqrtf(BlockSum(sum_sq) / dim + eps);
  const __nv_bfloat16* src = residual != nullptr ? residual + row * dim : x_row;
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    out[row * dim + i] = __float2bfloat16(__bfloat162float(src[i]) * inv_rms * __bfloat162float(weight[i]));
  }
}

}  // namespace

cudaError_t RmsNorm(const __nv_bfloat16* x, const __nv_bfloat16* weight, float eps, int rows, int dim,
                    __nv_bfloat16* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  RmsNormKernel<<<rows, kThreads, 0, stream>>>(x, nullptr, weight, eps, dim, out);
  return cudaGetLastError();
}

cudaError_t AddRmsNorm(__nv_bfloat16* residual, const __nv_bfloat16* x, const __nv_bfloat16* weight, float eps,
                       int rows, int dim, __nv_bfloat16* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  RmsNormKernel<<<rows, kThreads, 0, stream>>>(x, residual, weight, eps, dim, out);
  return cudaGetLastError();
}

}  // namespace mlaserve::cuda
