// Host-to-device copies of large pageable buffers (checkpoint bytes mapped
// from disk) through pinned staging: the host copies chunk i + 1 into one
// pinned buffer while the DMA engine moves chunk i from the other, so a
// weight upload runs at the PCIe rate instead of the driver's pageable path.
#ifndef MLASERVE_KERNELS_CUDA_PINNED_UPLOAD_H_
#define MLASERVE_KERNELS_CUDA_PINNED_UPLOAD_H_

#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"

namespace mlaserve {

class PinnedUpload {
 public:
  // Two staging buffers of `chunk_bytes` each, copies queued on `stream`.
  static absl::StatusOr<std::unique_ptr<PinnedUpload>> Create(cudaStream_t stream, size_t chunk_bytes = 32 << 20);
  ~PinnedUpload();
  PinnedUpload(const PinnedUpload&) = delete;
  PinnedUpload& operator=(const PinnedUpload&) = delete;

  // Copies `bytes` from host `src` (any memory) to device `dst` and returns
  // when they have arrived.
  absl::Status Copy(const void* src, size_t bytes, void* dst);

 private:
  PinnedUpload(cudaStream_t stream, size_t chunk_bytes) : stream_(stream), chunk_bytes_(chunk_bytes) {}
  cudaStream_t stream_;
  size_t chunk_bytes_;
  std::array<void*, 2> buffers_{};
  std::array<cudaEvent_t, 2> done_{};  // the buffer's last copy has left it
};

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_CUDA_PINNED_UPLOAD_H_
