// A dense, row-major tensor living on one backend's device. The backend that
// allocated it owns the memory through `storage`; copies of a Tensor share it.
// CPU tensors hold float32 (the reference precision); CUDA tensors hold bf16
// activations and weights with float32 where accuracy needs it.
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
Tensor Reshape(const Tensor& t, std::vector<int64_t> shape);
// Rows [begin, begin + count) of the leading dimension, sharing memory.
Tensor SliceRows(const Tensor& t, int64_t begin, int64_t count);

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_TENSOR_H_
