// MlaAbsorbed: the kernel for each kind of tile.
#include "kernels/cuda/mla/kernels.h"
#include "kernels/cuda/mla/launch.h"

namespace mlaserve::cuda {

cudaError_t MlaAbsorbed(MlaTileKind kind, const MlaWorkItem* items, int num_items, const MlaAbsorbedParams& params,
                        cudaStream_t stream) {
  if (num_items == 0) return cudaSuccess;
  const bool tensor_core_dims = params.rank == kMlaRank && params.rope == kMlaRope;
  switch (kind) {
    case MlaTileKind::kRows16:
      return tensor_core_dims ? mla::LaunchRows16(items, num_items, params, stream) : cudaErrorInvalidValue;
    case MlaTileKind::kRows64:
      return tensor_core_dims ? mla::LaunchRows64(items, num_items, params, stream) : cudaErrorInvalidValue;
    case MlaTileKind::kGeneric:
      return mla::LaunchAbsorbedGeneric(items, num_items, params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mlaserve::cuda
