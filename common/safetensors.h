// Reading and writing safetensors files (https://github.com/huggingface/safetensors).
//
// A SafetensorsFile memory-maps one file and validates its header completely at
// Open(): header length within the file, every tensor's dtype known, shape
// matching its byte length, offsets inside the data section and not overlapping.
// A Checkpoint is a model directory: one `model.safetensors`, or the shards
// named by `model.safetensors.index.json`. Errors name the file and the tensor.
#ifndef MLASERVE_COMMON_SAFETENSORS_H_
#define MLASERVE_COMMON_SAFETENSORS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/dtype.h"

namespace mlaserve {

// A tensor inside a mapped file; `data` stays valid while its file is open.
struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t num_bytes = 0;
  int64_t num_elements() const;
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const TensorView* Find(std::string_view name) const;  // nullptr if absent
  std::vector<std::string> TensorNames() const;          // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
  std::map<std::string, TensorView, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

class Checkpoint {
 public:
  // `dir` holds model.safetensors or model.safetensors.index.json and its shards.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  bool Has(std::string_view name) const;
  // NotFound naming the tensor and the directory when absent.
  absl::StatusOr<const TensorView*> Get(std::string_view name) const;
  // The file holding `name` (for error messages).
  std::string FileOf(std::string_view name) const;

  // Reads a whole tensor as float32 after checking its shape is `expected_shape`.
  // F8_E4M3 tensors are dequantized with their `<name>_scale_inv` companion
  // (one float scale per `fp8_block` x `fp8_block` block, as in DeepSeek-V3).
  absl::StatusOr<std::vector<float>> ReadF32(std::string_view name,
                                             absl::Span<const int64_t> expected_shape) const;
  // Rows [row_begin, row_end) of a 2-D tensor (or elements of a 1-D one), so a
  // shard reads only its part.
  absl::StatusOr<std::vector<float>> ReadRowsF32(std::string_view name,
                                                 absl::Span<const int64_t> expected_shape,
                                                 int64_t row_begin, int64_t row_end) const;
  // Columns [col_begin, col_end) of every row of a 2-D tensor: the shard of a
  // row-parallel weight (o_proj, down_proj) split along its input dimension.
  absl::StatusOr<std::vector<float>> ReadColumnsF32(std::string_view name,
                                                    absl::Span<const int64_t> expected_shape,
                                                    int64_t col_begin, int64_t col_end) const;
  // Bytes of rows [row_begin, row_end) x columns [col_begin, col_end) as
  // stored (no conversion) into `out`, after checking the shape is
  // `expected_shape`; a row is everything past the first dimension (one
  // element of a 1-D tensor). REQUIRES: out.size() is the slice's byte count.
  absl::Status ReadBytesInto(std::string_view name, absl::Span<const int64_t> expected_shape, int64_t row_begin,
                             int64_t row_end, int64_t col_begin, int64_t col_end, absl::Span<char> out) const;
  // For an F8_E4M3 matrix: the scale of each row of [row_begin, row_end) and
  // each 128-column group of [col_begin, col_end), i.e. its block's scale, as
  // a [rows, ceil(cols / 128)] table (how the FP8 kernels read scales).
  // FailedPrecondition when a group would straddle two blocks (blocks not a
  // multiple of 128 columns wide, or col_begin not a multiple of 128).
  absl::StatusOr<std::vector<float>> ReadFp8RowScales(std::string_view name, int64_t row_begin, int64_t row_end,
                                                      int64_t col_begin, int64_t col_end) const;
  // Asks the kernel to read every tensor whose name starts with `prefix`
  // and that `wanted` accepts (madvise WILLNEED: read-ahead, across files).
  void Prefetch(std::string_view prefix, const std::function<bool(std::string_view)>& wanted) const;
  void set_fp8_block(int64_t rows, int64_t cols) { fp8_block_rows_ = rows; fp8_block_cols_ = cols; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*, std::less<>> owner_;
  int64_t fp8_block_rows_ = 128;
  int64_t fp8_block_cols_ = 128;
};

// One tensor to write: raw little-endian bytes of `dtype` in row-major order.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};
TensorToWrite F32Tensor(std::string name, std::vector<int64_t> shape, absl::Span<const float> values);

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace mlaserve

#endif  // MLASERVE_COMMON_SAFETENSORS_H_
