#include "kernels/cuda/pinned_upload.h"

#include <algorithm>
#include <cstring>

#include "common/status_macros.h"
#include "kernels/cuda/cuda_check.h"

namespace mlaserve {

absl::StatusOr<std::unique_ptr<PinnedUpload>> PinnedUpload::Create(cudaStream_t stream, size_t chunk_bytes) {
  std::unique_ptr<PinnedUpload> upload(new PinnedUpload(stream, chunk_bytes));
  for (int i = 0; i < 2; ++i) {
    CUDA_RETURN_IF_ERROR(cudaMallocHost(&upload->buffers_[i], chunk_bytes));
    CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&upload->done_[i], cudaEventDisableTiming));
  }
  return upload;
}

PinnedUpload::~PinnedUpload() {
  cudaStreamSynchronize(stream_);
  for (int i = 0; i < 2; ++i) {
    if (buffers_[i] != nullptr) cudaFreeHost(buffers_[i]);
    if (done_[i] != nullptr) cudaEventDestroy(done_[i]);
  }
}

absl::Status PinnedUpload::Copy(const void* src, size_t bytes, void* dst) {
  const auto* from = static_cast<const char*>(src);
  auto* to = static_cast<char*>(dst);
  for (size_t at = 0, chunk = 0; at < bytes; at += chunk_bytes_, ++chunk) {
    const size_t n = std::min(chunk_bytes_, bytes - at);
    const int b = static_cast<int>(chunk % 2);
    CUDA_RETURN_IF_ERROR(cudaEventSynchronize(done_[b]));
    std::memcpy(buffers_[b], from + at, n);
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(to + at, buffers_[b], n, cudaMemcpyHostToDevice, stream_));
    CUDA_RETURN_IF_ERROR(cudaEventRecord(done_[b], stream_));
  }
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

}  // namespace mlaserve
