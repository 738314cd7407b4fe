#include "kernels/tensor.h"

#include "absl/strings/str_join.h"

namespace mlaserve {

std::string Tensor::ShapeString() const { return "[" + absl::StrJoin(shape, ", ") + "]"; }

Tensor Reshape(const Tensor& t, std::vector<int64_t> shape) {
  Tensor out = t;
  if (t.scale != nullptr && !shape.empty()) {
    std::vector<int64_t> scale_shape = shape;
    scale_shape.back() = Fp8Groups(shape.back());
    out.scale = std::make_shared<Tensor>(Reshape(*t.scale, std::move(scale_shape)));
  }
  out.shape = std::move(shape);
  return out;
}

Tensor SliceRows(const Tensor& t, int64_t begin, int64_t count) {
  Tensor out = t;
  const size_t row_bytes = t.shape.empty() || t.shape[0] == 0 ? 0 : t.num_bytes() / t.shape[0];
  out.data = static_cast<char*>(t.data) + begin * row_bytes;
  out.shape[0] = count;
  if (t.scale != nullptr) out.scale = std::make_shared<Tensor>(SliceRows(*t.scale, begin, count));
  return out;
}

}  // namespace mlaserve
