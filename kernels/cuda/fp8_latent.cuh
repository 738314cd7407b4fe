// How the GPU reads an FP8 latent cache row's c_kv (kernels/latent_row.h) as
// bf16, shared by the gather (elementwise.cu) and the attention kernels
// (mla/), so that both forms of attention see the same values. Included by .cu
// files only.
#ifndef MLASERVE_KERNELS_CUDA_FP8_LATENT_CUH_
#define MLASERVE_KERNELS_CUDA_FP8_LATENT_CUH_

#include <cuda_bf16.h>

#include <cstdint>

namespace mlaserve::cuda {

// The factor a row's float scale is multiplied by in bf16 (see DequantFp8Quad):
// bf16(scale * 2^120), saturating at bf16's largest finite value (a group whose
// largest value passes about 1.1e5; latents are RMS-normalized, far below).
__device__ __forceinline__ __nv_bfloat162 Fp8LatentScale(float scale) {
  return __float2bfloat162_rn(fminf(scale * 0x1p120f, 3.3895313892515355e38f));
}

// Four e4m3 values (the low byte first) as two bf16 pairs, each value
// bf16(e4m3 * bf16(scale)): PRMT puts each byte in the high byte of a 16-bit
// lane; s.eeee.mmm shifted into s.0000eeee.mmm0000 is the bf16 of the value
// times 2^-120 exactly (subnormals too), and one bf16x2 multiply by `scale2`
// (Fp8LatentScale) scales it back. Three instructions a pair, against six
// through float.
__device__ __forceinline__ void DequantFp8Quad(uint32_t four, __nv_bfloat162 scale2, uint32_t& lo, uint32_t& hi) {
  const uint32_t a = __byte_perm(four, 0, 0x1404), b = __byte_perm(four, 0, 0x3424);
  const uint32_t ra = ((a >> 4) & 0x07f007f0u) | (a & 0x80008000u);
  const uint32_t rb = ((b >> 4) & 0x07f007f0u) | (b & 0x80008000u);
  const __nv_bfloat162 pa = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&ra), scale2);
  const __nv_bfloat162 pb = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&rb), scale2);
  lo = *reinterpret_cast<const uint32_t*>(&pa);
  hi = *reinterpret_cast<const uint32_t*>(&pb);
}

// One e4m3 value, as DequantFp8Quad reads it.
__device__ __forceinline__ __nv_bfloat16 DequantFp8(uint8_t value, float scale) {
  uint32_t lo, hi;
  DequantFp8Quad(value, Fp8LatentScale(scale), lo, hi);
  return __ushort_as_bfloat16(static_cast<uint16_t>(lo & 0xffff));
}

}  // namespace mlaserve::cuda

#endif  // MLASERVE_KERNELS_CUDA_FP8_LATENT_CUH_
