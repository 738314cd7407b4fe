// How the GPU reads an FP8 latent cache row's c_kv (kernels/latent_row.h) as
// bf16, shared by the gather (elementwise.cu) and the attention kernels (mla/),
// so that both forms of attention see the same values. Included by .cu files
// only.
#ifndef MLASERVE_KERNELS_CUDA_FP8_LATENT_CUH_
#define MLASERVE_KERNELS_CUDA_FP8_LATENT_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "kernels/cuda/ptx.h"

namespace mlaserve::cuda {

// Two e4m3 values (the low byte first) as packed bf16: bf16(e4m3 * scale).
__device__ __forceinline__ uint32_t DequantFp8Pair(uint32_t two, float scale) {
  const __half2 h(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two & 0xffff), __NV_E4M3));
  const float2 f = __half22float2(h);
  return PackBf16(f.x * scale, f.y * scale);
}

// One e4m3 value, as DequantFp8Pair reads it.
__device__ __forceinline__ __nv_bfloat16 DequantFp8(uint8_t value, float scale) {
  return __ushort_as_bfloat16(static_cast<uint16_t>(DequantFp8Pair(value, scale) & 0xffff));
}

}  // namespace mlaserve::cuda

#endif  // MLASERVE_KERNELS_CUDA_FP8_LATENT_CUH_
