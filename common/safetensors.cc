#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace mlaserve {
namespace {

using Json = nlohmann::json;

constexpr size_t kLengthPrefixBytes = 8;
// The reference implementation refuses larger headers; so do we, so a corrupt
// length cannot make us parse most of a multi-gigabyte shard as JSON.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr char kMetadataKey[] = "__metadata__";
constexpr char kScaleSuffix[] = "_scale_inv";

// This Abseil build has its own string_view, which std::string_view does not
// convert to implicitly.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string ShapeString(absl::Span<const int64_t> shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

absl::Status FileError(const std::string& path, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
}

absl::Status TensorError(const std::string& path, absl::string_view tensor, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": tensor \"", tensor, "\": ", message));
}

// Product of `shape` times `element_bytes`, or nullopt on overflow.
std::optional<uint64_t> CheckedByteCount(absl::Span<const int64_t> shape, size_t element_bytes) {
  uint64_t total = element_bytes;
  for (int64_t dim : shape) {
    if (__builtin_mul_overflow(total, static_cast<uint64_t>(dim), &total)) return std::nullopt;
  }
  return total;
}

absl::StatusOr<DType> ParseEntryDType(const std::string& path, const std::string& name, const Json& entry) {
  auto it = entry.find("dtype");
  if (it == entry.end()) return TensorError(path, name, "missing \"dtype\"");
  if (!it->is_string()) return TensorError(path, name, "\"dtype\" is not a string");
  absl::StatusOr<DType> dtype = ParseDType(it->get_ref<const std::string&>());
  if (!dtype.ok()) return TensorError(path, name, dtype.status().message());
  return *dtype;
}

absl::StatusOr<std::vector<int64_t>> ParseEntryShape(const std::string& path, const std::string& name,
                                                     const Json& entry) {
  auto it = entry.find("shape");
  if (it == entry.end()) return TensorError(path, name, "missing \"shape\"");
  if (!it->is_array()) return TensorError(path, name, "\"shape\" is not an array");
  std::vector<int64_t> shape;
  for (const Json& dim : *it) {
    if (dim.is_number_integer() && !dim.is_number_unsigned()) {
      return TensorError(path, name, absl::StrCat("negative dimension ", dim.get<int64_t>(), " in shape"));
    }
    if (!dim.is_number_unsigned()) return TensorError(path, name, "shape holds a non-integer");
    const uint64_t value = dim.get<uint64_t>();
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TensorError(path, name, "dimension too large");
    }
    shape.push_back(static_cast<int64_t>(value));
  }
  return shape;
}

absl::StatusOr<std::pair<uint64_t, uint64_t>> ParseEntryOffsets(const std::string& path, const std::string& name,
                                                                const Json& entry) {
  auto it = entry.find("data_offsets");
  if (it == entry.end()) return TensorError(path, name, "missing \"data_offsets\"");
  if (!it->is_array() || it->size() != 2 || !(*it)[0].is_number_unsigned() || !(*it)[1].is_number_unsigned()) {
    return TensorError(path, name, "\"data_offsets\" is not two non-negative integers");
  }
  return std::make_pair((*it)[0].get<uint64_t>(), (*it)[1].get<uint64_t>());
}

// One header entry, checked against the data section [data, data + data_bytes).
absl::StatusOr<TensorView> ParseEntry(const std::string& path, const std::string& name, const Json& entry,
                                      const uint8_t* data, uint64_t data_bytes) {
  if (!entry.is_object()) return TensorError(path, name, "entry is not an object");
  TensorView view;
  view.name = name;
  ASSIGN_OR_RETURN(view.dtype, ParseEntryDType(path, name, entry));
  ASSIGN_OR_RETURN(view.shape, ParseEntryShape(path, name, entry));
  ASSIGN_OR_RETURN(auto offsets, ParseEntryOffsets(path, name, entry));
  const auto [begin, end] = offsets;
  if (begin > end) {
    return TensorError(path, name, absl::StrCat("data_offsets begin ", begin, " is after end ", end));
  }
  if (end > data_bytes) {
    return absl::DataLossError(absl::StrCat(path, ": tensor \"", name, "\": data_offsets [", begin, ", ", end,
                                            "] extend past the data section (", data_bytes, " bytes)"));
  }
  std::optional<uint64_t> expected = CheckedByteCount(view.shape, DTypeBytes(view.dtype));
  if (!expected.has_value() || *expected != end - begin) {
    return TensorError(path, name,
                       absl::StrCat("shape ", ShapeString(view.shape), " of ", Sv(DTypeName(view.dtype)), " needs ",
                                    expected.has_value() ? absl::StrCat(*expected) : "too many", " bytes but ",
                                    "data_offsets span ", end - begin));
  }
  view.data = data + begin;
  view.num_bytes = end - begin;
  return view;
}

absl::StatusOr<std::map<std::string, std::string>> ParseMetadata(const std::string& path, const Json& value) {
  std::map<std::string, std::string> metadata;
  if (value.is_null()) return metadata;
  if (!value.is_object()) return FileError(path, "\"__metadata__\" is not an object");
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) return FileError(path, absl::StrCat("\"__metadata__\" value for \"", key, "\" is not a string"));
    metadata[key] = item.get<std::string>();
  }
  return metadata;
}

// Tensors may not share bytes (empty tensors own none, so they never clash).
absl::Status CheckNoOverlap(const std::string& path, const std::map<std::string, TensorView, std::less<>>& tensors) {
  std::vector<const TensorView*> sorted;
  for (const auto& [name, view] : tensors) {
    if (view.num_bytes > 0) sorted.push_back(&view);
  }
  std::sort(sorted.begin(), sorted.end(), [](const TensorView* a, const TensorView* b) { return a->data < b->data; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    const TensorView& prev = *sorted[i - 1];
    if (sorted[i]->data < prev.data + prev.num_bytes) {
      return TensorError(path, sorted[i]->name, absl::StrCat("overlaps tensor \"", prev.name, "\""));
    }
  }
  return absl::OkStatus();
}

Json ParseJson(std::string_view text) {
  try {
    return Json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  } catch (const std::exception&) {
    return Json(Json::value_t::discarded);
  }
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return contents.str();
}

bool IsRegularFile(const std::string& path) {
  std::error_code error;
  return std::filesystem::is_regular_file(path, error);
}

// `weight_map` of a model.safetensors.index.json: tensor name -> shard file.
absl::StatusOr<std::map<std::string, std::string>> ParseWeightMap(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  const Json index = ParseJson(text);
  if (index.is_discarded()) return FileError(path, "not valid JSON");
  if (!index.is_object()) return FileError(path, "not a JSON object");
  auto it = index.find("weight_map");
  if (it == index.end() || !it->is_object()) return FileError(path, "no \"weight_map\" object");
  std::map<std::string, std::string> weight_map;
  for (const auto& [tensor, file] : it->items()) {
    if (!file.is_string() || file.get_ref<const std::string&>().empty()) {
      return FileError(path, absl::StrCat("weight_map entry for \"", tensor, "\" is not a file name"));
    }
    weight_map[tensor] = file.get<std::string>();
  }
  if (weight_map.empty()) return FileError(path, "weight_map is empty");
  return weight_map;
}

absl::Status CheckShape(const TensorView& tensor, const std::string& file, absl::Span<const int64_t> expected) {
  if (absl::Span<const int64_t>(tensor.shape) == expected) return absl::OkStatus();
  return TensorError(file, tensor.name,
                     absl::StrCat("expected shape ", ShapeString(expected), ", got ", ShapeString(tensor.shape)));
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Elements per slice along the first dimension.
int64_t RowSize(const TensorView& tensor) {
  int64_t size = 1;
  for (size_t i = 1; i < tensor.shape.size(); ++i) size *= tensor.shape[i];
  return size;
}

// Rows [row_begin, row_end) of a plain (not block-quantized) tensor.
std::vector<float> ConvertRows(const TensorView& tensor, int64_t row_begin, int64_t row_end) {
  const int64_t row_size = RowSize(tensor);
  std::vector<float> out((row_end - row_begin) * row_size);
  const uint8_t* src = tensor.data + row_begin * row_size * DTypeBytes(tensor.dtype);
  ConvertToF32(tensor.dtype, src, out.size(), out.data());
  return out;
}

struct Fp8Block {
  int64_t rows;
  int64_t cols;
};

// Scales scale_rows [first, last] of the `<weight>_scale_inv` companion, after
// checking it has one float per block of the weight.
absl::StatusOr<std::vector<float>> ReadScaleRows(const Checkpoint& checkpoint, const TensorView& weight,
                                                 Fp8Block block, int64_t first, int64_t last) {
  const std::string scale_name = absl::StrCat(weight.name, kScaleSuffix);
  const std::string weight_file = checkpoint.FileOf(weight.name);
  if (!checkpoint.Has(scale_name)) {
    return absl::NotFoundError(absl::StrCat(weight_file, ": tensor \"", weight.name, "\" is F8_E4M3 but its scale \"",
                                            scale_name, "\" is missing"));
  }
  ASSIGN_OR_RETURN(const TensorView* scale, checkpoint.Get(scale_name));
  const std::string scale_file = checkpoint.FileOf(scale_name);
  if (scale->dtype != DType::kF32 && scale->dtype != DType::kBF16) {
    return TensorError(scale_file, scale_name, absl::StrCat("scale dtype ", Sv(DTypeName(scale->dtype)), " is not F32 or BF16"));
  }
  const int64_t expected[2] = {CeilDiv(weight.shape[0], block.rows), CeilDiv(weight.shape[1], block.cols)};
  RETURN_IF_ERROR(CheckShape(*scale, scale_file, expected));
  return ConvertRows(*scale, first, last + 1);
}

// DeepSeek-V3's weight_dequant: every block.rows x block.cols tile of the fp8
// weight is multiplied by its own scale.
absl::StatusOr<std::vector<float>> DequantizeFp8Rows(const Checkpoint& checkpoint, const TensorView& weight,
                                                    Fp8Block block, int64_t row_begin, int64_t row_end) {
  const std::string file = checkpoint.FileOf(weight.name);
  if (weight.shape.size() != 2) {
    return TensorError(file, weight.name, absl::StrCat("F8_E4M3 tensor must be 2-D, got ", ShapeString(weight.shape)));
  }
  if (block.rows <= 0 || block.cols <= 0) {
    return TensorError(file, weight.name, absl::StrCat("invalid fp8 block ", block.rows, "x", block.cols));
  }
  std::vector<float> out = ConvertRows(weight, row_begin, row_end);
  if (row_begin == row_end) return out;
  const int64_t first_block = row_begin / block.rows;
  const int64_t last_block = (row_end - 1) / block.rows;
  ASSIGN_OR_RETURN(std::vector<float> scales, ReadScaleRows(checkpoint, weight, block, first_block, last_block));
  const int64_t cols = weight.shape[1];
  const int64_t scale_cols = CeilDiv(cols, block.cols);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const float* scale_row = scales.data() + (r / block.rows - first_block) * scale_cols;
    float* row = out.data() + (r - row_begin) * cols;
    for (int64_t c = 0; c < cols; ++c) row[c] *= scale_row[c / block.cols];
  }
  return out;
}

// Parses and validates the header of the mapped file [bytes, bytes + file_bytes).
absl::Status ParseHeader(const std::string& path, const uint8_t* bytes, size_t file_bytes,
                         std::map<std::string, TensorView, std::less<>>& tensors,
                         std::map<std::string, std::string>& metadata) {
  uint64_t header_bytes;
  std::memcpy(&header_bytes, bytes, sizeof(header_bytes));  // little-endian, as the host
  const uint64_t available = file_bytes - kLengthPrefixBytes;
  if (header_bytes > available) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_bytes, " is past the end of the file (",
                                            available, " bytes after the length)"));
  }
  if (header_bytes > kMaxHeaderBytes) return FileError(path, absl::StrCat("header length ", header_bytes, " too large"));
  const char* header_begin = reinterpret_cast<const char*>(bytes + kLengthPrefixBytes);
  const Json header = ParseJson(std::string_view(header_begin, header_bytes));
  if (header.is_discarded()) return FileError(path, "header is not valid JSON");
  if (!header.is_object()) return FileError(path, "header is not a JSON object");

  const uint8_t* data = bytes + kLengthPrefixBytes + header_bytes;
  const uint64_t data_bytes = available - header_bytes;
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      ASSIGN_OR_RETURN(metadata, ParseMetadata(path, entry));
      continue;
    }
    ASSIGN_OR_RETURN(TensorView view, ParseEntry(path, name, entry, data, data_bytes));
    tensors.emplace(name, std::move(view));
  }
  return CheckNoOverlap(path, tensors);
}

}  // namespace

int64_t TensorView::num_elements() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

// ---------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return FileError(path, "not a regular file");
  }
  const size_t file_bytes = static_cast<size_t>(st.st_size);
  if (file_bytes < kLengthPrefixBytes) {
    ::close(fd);
    return absl::DataLossError(absl::StrCat(path, ": file is ", file_bytes, " bytes, shorter than the 8-byte header length"));
  }
  void* mapping = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (mapping == MAP_FAILED) return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(mmap_errno)));

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = mapping;
  file->mapping_bytes_ = file_bytes;
  RETURN_IF_ERROR(ParseHeader(path, static_cast<const uint8_t*>(mapping), file_bytes, file->tensors_, file->metadata_));
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_bytes_);
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsFile::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, view] : tensors_) names.push_back(name);
  return names;
}

// ---------------------------------------------------------------------------
// Checkpoint

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  auto checkpoint = std::make_unique<Checkpoint>();
  checkpoint->dir_ = dir;
  const std::string index_path = dir + "/model.safetensors.index.json";
  const std::string single_path = dir + "/model.safetensors";
  if (IsRegularFile(index_path)) {
    ASSIGN_OR_RETURN(auto weight_map, ParseWeightMap(index_path));
    std::map<std::string, const SafetensorsFile*> shards;  // each shard mapped once
    for (const auto& [tensor, file_name] : weight_map) {
      const SafetensorsFile*& shard = shards[file_name];
      if (shard == nullptr) {
        ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> opened, SafetensorsFile::Open(dir + "/" + file_name));
        shard = opened.get();
        checkpoint->files_.push_back(std::move(opened));
      }
      if (shard->Find(tensor) == nullptr) {
        return absl::NotFoundError(absl::StrCat(index_path, ": tensor \"", tensor, "\" is not in its shard ", shard->path()));
      }
      checkpoint->owner_[tensor] = shard;
    }
  } else if (IsRegularFile(single_path)) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single_path));
    for (const std::string& name : file->TensorNames()) checkpoint->owner_[name] = file.get();
    checkpoint->files_.push_back(std::move(file));
  } else {
    return absl::NotFoundError(absl::StrCat(dir, ": neither model.safetensors nor model.safetensors.index.json found"));
  }
  return checkpoint;
}

bool Checkpoint::Has(std::string_view name) const { return owner_.find(name) != owner_.end(); }

absl::StatusOr<const TensorView*> Checkpoint::Get(std::string_view name) const {
  auto it = owner_.find(name);
  if (it == owner_.end()) return absl::NotFoundError(absl::StrCat("tensor \"", Sv(name), "\" not found in checkpoint ", dir_));
  return it->second->Find(name);
}

std::string Checkpoint::FileOf(std::string_view name) const {
  auto it = owner_.find(name);
  return it == owner_.end() ? dir_ : it->second->path();
}

absl::StatusOr<std::vector<float>> Checkpoint::ReadF32(std::string_view name,
                                                       absl::Span<const int64_t> expected_shape) const {
  ASSIGN_OR_RETURN(const TensorView* tensor, Get(name));
  RETURN_IF_ERROR(CheckShape(*tensor, FileOf(name), expected_shape));
  if (tensor->shape.empty()) return ConvertRows(*tensor, 0, 1);  // a scalar is one row of one element
  return ReadRowsF32(name, expected_shape, 0, tensor->shape[0]);
}

absl::StatusOr<std::vector<float>> Checkpoint::ReadRowsF32(std::string_view name,
                                                           absl::Span<const int64_t> expected_shape,
                                                           int64_t row_begin, int64_t row_end) const {
  ASSIGN_OR_RETURN(const TensorView* tensor, Get(name));
  const std::string file = FileOf(name);
  RETURN_IF_ERROR(CheckShape(*tensor, file, expected_shape));
  if (tensor->shape.empty()) return TensorError(file, tensor->name, "cannot read rows of a scalar");
  if (row_begin < 0 || row_begin > row_end || row_end > tensor->shape[0]) {
    return absl::OutOfRangeError(absl::StrCat(file, ": tensor \"", Sv(name), "\": rows [", row_begin, ", ", row_end,
                                              ") outside [0, ", tensor->shape[0], ")"));
  }
  if (tensor->dtype == DType::kF8E4M3) {
    return DequantizeFp8Rows(*this, *tensor, Fp8Block{fp8_block_rows_, fp8_block_cols_}, row_begin, row_end);
  }
  return ConvertRows(*tensor, row_begin, row_end);
}

absl::StatusOr<std::vector<float>> Checkpoint::ReadColumnsF32(std::string_view name,
                                                              absl::Span<const int64_t> expected_shape,
                                                              int64_t col_begin, int64_t col_end) const {
  ASSIGN_OR_RETURN(const TensorView* tensor, Get(name));
  const std::string file = FileOf(name);
  RETURN_IF_ERROR(CheckShape(*tensor, file, expected_shape));
  if (tensor->shape.size() != 2) return TensorError(file, tensor->name, "column slices need a 2-D tensor");
  const int64_t rows = tensor->shape[0], cols = tensor->shape[1], width = col_end - col_begin;
  if (col_begin < 0 || col_begin > col_end || col_end > cols) {
    return absl::OutOfRangeError(absl::StrCat(file, ": tensor \"", Sv(name), "\": columns [", col_begin, ", ", col_end,
                                              ") outside [0, ", cols, ")"));
  }
  std::vector<float> out(rows * width);
  const size_t element_bytes = DTypeBytes(tensor->dtype);
  for (int64_t r = 0; r < rows; ++r) {
    ConvertToF32(tensor->dtype, tensor->data + (r * cols + col_begin) * element_bytes, width, out.data() + r * width);
  }
  if (tensor->dtype != DType::kF8E4M3 || rows == 0) return out;
  const Fp8Block block{fp8_block_rows_, fp8_block_cols_};
  if (block.rows <= 0 || block.cols <= 0) {
    return TensorError(file, tensor->name, absl::StrCat("invalid fp8 block ", block.rows, "x", block.cols));
  }
  ASSIGN_OR_RETURN(std::vector<float> scales, ReadScaleRows(*this, *tensor, block, 0, (rows - 1) / block.rows));
  const int64_t scale_cols = CeilDiv(cols, block.cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < width; ++c) {
      out[r * width + c] *= scales[(r / block.rows) * scale_cols + (col_begin + c) / block.cols];
    }
  }
  return out;
}

void Checkpoint::Prefetch(std::string_view prefix, const std::function<bool(std::string_view)>& wanted) const {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  for (auto it = owner_.lower_bound(prefix); it != owner_.end() && std::string_view(it->first).starts_with(prefix); ++it) {
    if (!wanted(it->first)) continue;
    const TensorView* tensor = it->second->Find(it->first);
    if (tensor == nullptr || tensor->num_bytes == 0) continue;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(tensor->data) & ~(page - 1);
    const uintptr_t end = reinterpret_cast<uintptr_t>(tensor->data) + tensor->num_bytes;
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);  // advice only: failure changes nothing
  }
}

absl::Status Checkpoint::ReadBytesInto(std::string_view name, absl::Span<const int64_t> expected_shape,
                                       int64_t row_begin, int64_t row_end, int64_t col_begin, int64_t col_end,
                                       absl::Span<char> out) const {
  ASSIGN_OR_RETURN(const TensorView* tensor, Get(name));
  const std::string file = FileOf(name);
  RETURN_IF_ERROR(CheckShape(*tensor, file, expected_shape));
  if (tensor->shape.empty()) return TensorError(file, tensor->name, "cannot read rows of a scalar");
  const int64_t rows = tensor->shape[0], cols = RowSize(*tensor);
  if (row_begin < 0 || row_begin > row_end || row_end > rows || col_begin < 0 || col_begin > col_end ||
      col_end > cols) {
    return absl::OutOfRangeError(absl::StrCat(file, ": tensor \"", Sv(name), "\": rows [", row_begin, ", ", row_end,
                                              ") x columns [", col_begin, ", ", col_end, ") outside ",
                                              ShapeString(tensor->shape)));
  }
  const size_t element = DTypeBytes(tensor->dtype), width = (col_end - col_begin) * element;
  if (out.size() != (row_end - row_begin) * width) {
    return absl::InternalError(absl::StrCat(file, ": tensor \"", Sv(name), "\": ", out.size(), " bytes for a slice of ",
                                            (row_end - row_begin) * width));
  }
  for (int64_t r = row_begin; r < row_end; ++r) {
    std::memcpy(out.data() + (r - row_begin) * width, tensor->data + (r * cols + col_begin) * element, width);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> Checkpoint::ReadFp8RowScales(std::string_view name, int64_t row_begin,
                                                                int64_t row_end, int64_t col_begin,
                                                                int64_t col_end) const {
  constexpr int64_t kGroup = 128;
  ASSIGN_OR_RETURN(const TensorView* tensor, Get(name));
  const std::string file = FileOf(name);
  if (tensor->dtype != DType::kF8E4M3 || tensor->shape.size() != 2) {
    return TensorError(file, tensor->name, "row scales need a 2-D F8_E4M3 tensor");
  }
  const Fp8Block block{fp8_block_rows_, fp8_block_cols_};
  if (block.rows <= 0 || block.cols <= 0) {
    return TensorError(file, tensor->name, absl::StrCat("invalid fp8 block ", block.rows, "x", block.cols));
  }
  if (block.cols % kGroup != 0 || col_begin % kGroup != 0) {
    return absl::FailedPreconditionError(absl::StrCat(file, ": tensor \"", Sv(name), "\": columns from ", col_begin,
                                                      " in blocks of ", block.cols,
                                                      " do not fall in 128-column groups"));
  }
  if (row_begin < 0 || row_begin > row_end || row_end > tensor->shape[0] || col_begin > col_end ||
      col_end > tensor->shape[1]) {
    return absl::OutOfRangeError(absl::StrCat(file, ": tensor \"", Sv(name), "\": rows [", row_begin, ", ", row_end,
                                              ") x columns [", col_begin, ", ", col_end, ") outside ",
                                              ShapeString(tensor->shape)));
  }
  const int64_t groups = CeilDiv(col_end - col_begin, kGroup);
  std::vector<float> out((row_end - row_begin) * groups);
  if (out.empty()) return out;
  const int64_t first = row_begin / block.rows;
  ASSIGN_OR_RETURN(std::vector<float> scales, ReadScaleRows(*this, *tensor, block, first, (row_end - 1) / block.rows));
  const int64_t scale_cols = CeilDiv(tensor->shape[1], block.cols);
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      out[(r - row_begin) * groups + g] = scales[(r / block.rows - first) * scale_cols + (col_begin + g * kGroup) / block.cols];
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Writing

TensorToWrite F32Tensor(std::string name, std::vector<int64_t> shape, absl::Span<const float> values) {
  TensorToWrite tensor{std::move(name), DType::kF32, std::move(shape), std::string(values.size() * sizeof(float), '\0')};
  if (!values.empty()) std::memcpy(tensor.bytes.data(), values.data(), tensor.bytes.size());
  return tensor;
}

namespace {

absl::Status CheckTensorToWrite(const std::string& path, const TensorToWrite& tensor) {
  if (tensor.name == kMetadataKey) return TensorError(path, tensor.name, "reserved name");
  for (int64_t dim : tensor.shape) {
    if (dim < 0) return TensorError(path, tensor.name, absl::StrCat("negative dimension in ", ShapeString(tensor.shape)));
  }
  std::optional<uint64_t> expected = CheckedByteCount(tensor.shape, DTypeBytes(tensor.dtype));
  if (!expected.has_value() || *expected != tensor.bytes.size()) {
    return TensorError(path, tensor.name,
                       absl::StrCat("shape ", ShapeString(tensor.shape), " of ", Sv(DTypeName(tensor.dtype)),
                                    " does not match ", tensor.bytes.size(), " bytes"));
  }
  return absl::OkStatus();
}

// The header, padded with spaces to a multiple of 8 as the Python library does
// so that the data section starts aligned.
absl::StatusOr<std::string> BuildHeader(const std::string& path, const std::vector<const TensorToWrite*>& order,
                                        const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite* tensor : order) {
    const uint64_t end = offset + tensor->bytes.size();
    header[tensor->name] = {{"dtype", std::string(DTypeName(tensor->dtype))},
                            {"shape", tensor->shape},
                            {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const std::exception& e) {  // names or metadata that are not UTF-8
    return FileError(path, absl::StrCat("cannot encode header: ", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

absl::Status WriteBytes(const std::string& path, const std::string& header, const std::vector<const TensorToWrite*>& order) {
  // Written aside and renamed so a reader never maps a half-written file.
  const std::string temp_path = path + ".tmp";
  {
    std::ofstream out(temp_path, std::ios::binary | std::ios::trunc);
    if (!out) return absl::PermissionDeniedError(absl::StrCat(temp_path, ": cannot create: ", std::strerror(errno)));
    uint64_t header_bytes = header.size();
    out.write(reinterpret_cast<const char*>(&header_bytes), sizeof(header_bytes));
    out.write(header.data(), header.size());
    for (const TensorToWrite* tensor : order) out.write(tensor->bytes.data(), tensor->bytes.size());
    out.close();
    if (!out) return absl::DataLossError(absl::StrCat(temp_path, ": write failed"));
  }
  if (std::rename(temp_path.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat(path, ": rename failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> order;
  for (const TensorToWrite& tensor : tensors) {
    RETURN_IF_ERROR(CheckTensorToWrite(path, tensor));
    order.push_back(&tensor);
  }
  // Widest elements first, then by name, as the Python library lays files out:
  // with the 8-byte-aligned data section every tensor is then naturally aligned.
  std::sort(order.begin(), order.end(), [](const TensorToWrite* a, const TensorToWrite* b) {
    const size_t a_bytes = DTypeBytes(a->dtype), b_bytes = DTypeBytes(b->dtype);
    return a_bytes != b_bytes ? a_bytes > b_bytes : a->name < b->name;
  });
  std::map<std::string_view, int> seen;
  for (const TensorToWrite* tensor : order) {
    if (++seen[tensor->name] > 1) return TensorError(path, tensor->name, "duplicate tensor name");
  }
  ASSIGN_OR_RETURN(std::string header, BuildHeader(path, order, metadata));
  return WriteBytes(path, header, order);
}

}  // namespace mlaserve
