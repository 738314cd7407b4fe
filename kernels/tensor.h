// A dense, row-major tensor living on one backend's device. The backend that
// allocated it owns the memory through `storage`; copies of a Tensor share it.
// CPU tensors hold float32 (the reference precision); CUDA tensors hold bf16
// activations and weights with float32 where accuracy needs it. A weight of
// either backend may also be FP8 (e4m3) with its scales beside it.
#ifndef MLASERVE_KERNELS_TENSOR_H_
#define MLASERVE_KERNELS_TENSOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace mlaserve {

enum class Device { kCpu, kCuda };

struct Tensor {
  DType dtype = DType::kF32;
  Device device = Device::kCpu;
  std::vector<int64_t> shape;
  std::shared_ptr<void> storage;
  void* data = nullptr;
  // F8E4M3 weights only: float32 scales of shape [leading dims..., ceil(last
  // dim / 128)], one per row and 128-column group (the value is q * scale).
  std::shared_ptr<Tensor> scale;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  int64_t rank() const { return static_cast<int64_t>(shape.size()); }
  size_t num_bytes() const { return static_cast<size_t>(numel()) * DTypeBytes(dtype); }
  bool defined() const { return data != nullptr || numel() == 0; }
  template <typename T>
  T* as() const { return static_cast<T*>(data); }
  std::string ShapeString() const;
};

// The same memory seen with another shape; the caller keeps the element count.
// REQUIRES: a tensor with scales keeps its last dimension.
Tensor Reshape(const Tensor& t, std::vector<int64_t> shape);
// Rows [begin, begin + count) of the leading dimension, sharing memory (and
// the matching rows of the scales).
Tensor SliceRows(const Tensor& t, int64_t begin, int64_t count);

// Columns per scale of an FP8 tensor, and the scale count of a row of `cols`.
constexpr int64_t kFp8ScaleGroup = 128;
inline int64_t Fp8Groups(int64_t cols) { return (cols + kFp8ScaleGroup - 1) / kFp8ScaleGroup; }

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_TENSOR_H_
