// The rank order every top-k of the CUDA kernels follows, as the CPU
// reference does (kernels/sampler.h, kernels/cpu's router): larger value
// first, ties to the lower index; and a warp's best by that order. Included
// by .cu files only.
#ifndef MLASERVE_KERNELS_CUDA_RANK_ORDER_H_
#define MLASERVE_KERNELS_CUDA_RANK_ORDER_H_

namespace mlaserve::cuda {

template <typename Index>
__device__ __forceinline__ bool Better(float va, Index ia, float vb, Index ib) {
  return va > vb || (va == vb && ia < ib);
}

// Every lane ends with the warp's best (value, index).
template <typename Index>
__device__ __forceinline__ void WarpArgMax(float& value, Index& index) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other_value = __shfl_xor_sync(0xffffffff, value, offset);
    const Index other_index = __shfl_xor_sync(0xffffffff, index, offset);
    if (Better(other_value, other_index, value, index)) value = other_value, index = other_index;
  }
}

}  // namespace mlaserve::cuda

#endif  // MLASERVE_KERNELS_CUDA_RANK_ORDER_H_
