#include "kernels/cuda/device_arrays.h"

#include <algorithm>

#include "kernels/cuda/cuda_check.h"

namespace mlaserve {

DeviceArrays::~DeviceArrays() {
  if (step_device_ != nullptr) cudaFreeAsync(step_device_, stream_);
  if (meta_device_ != nullptr) cudaFreeAsync(meta_device_, stream_);
  cudaStreamSynchronize(stream_);
  if (step_host_ != nullptr) cudaFreeHost(step_host_);
  if (staging_ != nullptr) cudaFreeHost(staging_);
  if (staging_done_ != nullptr) cudaEventDestroy(staging_done_);
  if (step_copied_ != nullptr) cudaEventDestroy(step_copied_);
}

absl::Status DeviceArrays::BeginStep(const StepInputs& inputs, bool* moved) {
  MetaPack pack;
  const size_t ids_at = pack.Add(inputs.token_ids.data(), inputs.token_ids.size());
  const size_t positions_at = pack.Add(inputs.positions.data(), inputs.positions.size());
  const size_t slots_at = pack.Add(inputs.slots.data(), inputs.slots.size());
  const size_t rows_at = pack.Add(inputs.logit_rows.data(), inputs.logit_rows.size());
  const size_t bytes = std::max<size_t>(pack.bytes().size(), 16);
  *moved = false;
  // The previous step's copy must be done before its pinned buffer is rewritten.
  if (step_host_ != nullptr) CUDA_RETURN_IF_ERROR(cudaEventSynchronize(step_copied_));
  if (bytes > step_bytes_) {
    *moved = step_device_ != nullptr;
    const size_t capacity = std::max<size_t>({bytes, 2 * step_bytes_, size_t{1} << 12});
    if (step_device_ != nullptr) CUDA_RETURN_IF_ERROR(cudaFreeAsync(step_device_, stream_));
    if (step_host_ != nullptr) CUDA_RETURN_IF_ERROR(cudaFreeHost(step_host_));
    step_device_ = nullptr, step_host_ = nullptr, step_bytes_ = 0;
    CUDA_RETURN_IF_ERROR(cudaMallocAsync(&step_device_, capacity, stream_));
    CUDA_RETURN_IF_ERROR(cudaMallocHost(&step_host_, capacity));
    if (step_copied_ == nullptr) CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&step_copied_, cudaEventDisableTiming));
    step_bytes_ = capacity;
  }
  std::memcpy(step_host_, pack.bytes().data(), pack.bytes().size());
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(step_device_, step_host_, bytes, cudaMemcpyHostToDevice, stream_));
  CUDA_RETURN_IF_ERROR(cudaEventRecord(step_copied_, stream_));
  step_ = Step{.active = true, .inputs = inputs};
  step_.copies = {{inputs.token_ids.data(), inputs.token_ids.size() * sizeof(int32_t), ids_at},
                  {inputs.positions.data(), inputs.positions.size() * sizeof(int32_t), positions_at},
                  {inputs.slots.data(), inputs.slots.size() * sizeof(int64_t), slots_at},
                  {inputs.logit_rows.data(), inputs.logit_rows.size() * sizeof(int32_t), rows_at}};
  return absl::OkStatus();
}

void DeviceArrays::EndStep() { step_ = Step{}; }

const char* DeviceArrays::StepCopyOf(const void* data, size_t bytes) const {
  if (!step_.active || bytes == 0) return nullptr;
  for (const StepCopy& c : step_.copies) {
    if (c.host == data && c.bytes == bytes) return static_cast<const char*>(step_device_) + c.offset;
  }
  return nullptr;
}

absl::StatusOr<const char*> DeviceArrays::Upload(const MetaPack& pack, bool capturing) {
  const size_t bytes = pack.bytes().size();
  if (capturing && bytes > 0) return absl::FailedPreconditionError("an op uploads metadata inside a recorded step");
  if (bytes == 0) return static_cast<const char*>(meta_device_);
  if (staging_done_ == nullptr) CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&staging_done_, cudaEventDisableTiming));
  const size_t rounded = (bytes + 255) / 256 * 256;
  if (rounded > meta_device_bytes_) {
    const size_t capacity = std::max<size_t>({rounded, 2 * meta_device_bytes_, size_t{1} << 16});
    if (meta_device_ != nullptr) CUDA_RETURN_IF_ERROR(cudaFreeAsync(meta_device_, stream_));
    meta_device_ = nullptr;
    meta_device_bytes_ = 0;
    CUDA_RETURN_IF_ERROR(cudaMallocAsync(&meta_device_, capacity, stream_));
    meta_device_bytes_ = capacity;
  }
  if (staging_used_ + rounded > staging_bytes_) {
    // Every earlier copy out of the staging buffer must be done before it is reused.
    CUDA_RETURN_IF_ERROR(cudaEventSynchronize(staging_done_));
    staging_used_ = 0;
    if (rounded > staging_bytes_) {
      if (staging_ != nullptr) CUDA_RETURN_IF_ERROR(cudaFreeHost(staging_));
      staging_ = nullptr;
      staging_bytes_ = std::max<size_t>(rounded, 4 << 20);
      CUDA_RETURN_IF_ERROR(cudaMallocHost(&staging_, staging_bytes_));
    }
  }
  char* host = static_cast<char*>(staging_) + staging_used_;
  std::memcpy(host, pack.bytes().data(), bytes);
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(meta_device_, host, bytes, cudaMemcpyHostToDevice, stream_));
  CUDA_RETURN_IF_ERROR(cudaEventRecord(staging_done_, stream_));
  staging_used_ += rounded;
  return static_cast<const char*>(meta_device_);
}

}  // namespace mlaserve
