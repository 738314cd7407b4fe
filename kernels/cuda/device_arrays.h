// Host arrays an op needs on the device (token ids, positions, cache slots,
// block tables, expert tables), copied asynchronously through pinned memory.
// A step's arrays are uploaded once, at its start, into a buffer that every
// op of the step reads (and that recorded steps bake in); any other array
// goes through a metadata buffer reused by the next op, which stream order
// makes safe. Part of the CUDA backend (kernels/cuda/cuda_ops.cc); runs on
// the stream it was given.
#ifndef MLASERVE_KERNELS_CUDA_DEVICE_ARRAYS_H_
#define MLASERVE_KERNELS_CUDA_DEVICE_ARRAYS_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstring>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/ops.h"

namespace mlaserve {

// Host arrays packed for one copy (16-byte aligned pieces).
class MetaPack {
 public:
  // Appends `n` values; returns their byte offset in the pack.
  template <typename T>
  size_t Add(const T* data, size_t n) {
    const size_t offset = (bytes_.size() + 15) / 16 * 16;
    bytes_.resize(offset + n * sizeof(T));
    if (n > 0) std::memcpy(bytes_.data() + offset, data, n * sizeof(T));
    return offset;
  }
  template <typename T>
  size_t Add(const std::vector<T>& v) {
    return Add(v.data(), v.size());
  }
  const std::vector<char>& bytes() const { return bytes_; }

 private:
  std::vector<char> bytes_;
};

class DeviceArrays {
 public:
  explicit DeviceArrays(cudaStream_t stream) : stream_(stream) {}
  // Waits for the copies in flight, then frees the buffers.
  ~DeviceArrays();
  DeviceArrays(const DeviceArrays&) = delete;
  DeviceArrays& operator=(const DeviceArrays&) = delete;

  // Uploads the arrays of `inputs` (ids, positions, slots, logit rows) for
  // the step that starts. Sets *moved when the step buffer had to grow: what
  // was recorded against the old one must be dropped.
  // REQUIRES: the arrays of `inputs` stay alive and unchanged until EndStep.
  absl::Status BeginStep(const StepInputs& inputs, bool* moved);
  void EndStep();
  bool in_step() const { return step_.active; }
  const StepInputs& step_inputs() const { return step_.inputs; }
  // The step buffer's address, part of what a recorded step depends on.
  const void* step_buffer() const { return step_device_; }

  // The device copy of `values`: the step's own, when `values` is one of
  // the step's arrays, else a fresh upload into the metadata buffer (valid
  // until the next upload's op has run).
  // REQUIRES: no recording is being captured, unless `values` is a step array.
  template <typename T>
  absl::StatusOr<const T*> Get(absl::Span<const T> values, bool capturing) {
    if (const char* copy = StepCopyOf(values.data(), values.size() * sizeof(T))) return reinterpret_cast<const T*>(copy);
    MetaPack pack;
    const size_t at = pack.Add(values.data(), values.size());
    absl::StatusOr<const char*> meta = Upload(pack, capturing);
    if (!meta.ok()) return meta.status();
    return reinterpret_cast<const T*>(*meta + at);
  }

  // Copies `pack` into the metadata buffer and returns its device address.
  // FailedPrecondition while `capturing` (a recording cannot upload).
  absl::StatusOr<const char*> Upload(const MetaPack& pack, bool capturing);

 private:
  struct StepCopy {
    const void* host = nullptr;
    size_t bytes = 0;
    size_t offset = 0;  // in step_device_
  };
  struct Step {
    bool active = false;
    StepInputs inputs;
    std::vector<StepCopy> copies;
  };

  // Where BeginStep put `data` (bytes long) on the device, when it is one of
  // the step's arrays; else null.
  const char* StepCopyOf(const void* data, size_t bytes) const;

  const cudaStream_t stream_;
  // Metadata: one device buffer reused by every op, filled from pinned staging memory.
  void* meta_device_ = nullptr;
  size_t meta_device_bytes_ = 0;
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0;
  size_t staging_used_ = 0;
  cudaEvent_t staging_done_ = nullptr;
  // The step's arrays: pinned and device copies, reused by every step.
  void* step_host_ = nullptr;
  void* step_device_ = nullptr;
  size_t step_bytes_ = 0;
  cudaEvent_t step_copied_ = nullptr;
  Step step_;
};

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_CUDA_DEVICE_ARRAYS_H_
