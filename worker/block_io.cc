#include "worker/block_io.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mlaserve {
namespace {

absl::Status CheckBlock(const Tensor& pool, int32_t block) {
  if (block >= 0 && block < pool.dim(0)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("block ", block, " outside the cache's ", pool.dim(0), " blocks"));
}

}  // namespace

int64_t ValuesPerBlock(const Tensor& pool) { return pool.numel() / pool.dim(0); }

absl::Status ReadBlocks(Ops& ops, const Tensor& pool, absl::Span<const int32_t> blocks, std::vector<float>* out) {
  const int64_t per_block = ValuesPerBlock(pool);
  for (int32_t block : blocks) {
    RETURN_IF_ERROR(CheckBlock(pool, block));
    const size_t at = out->size();
    out->resize(at + per_block);
    RETURN_IF_ERROR(ops.Download(SliceRows(pool, block, 1), absl::MakeSpan(out->data() + at, per_block)));
  }
  return absl::OkStatus();
}

absl::Status WriteBlocks(Ops& ops, Tensor& pool, absl::Span<const int32_t> blocks, absl::Span<const float> values) {
  const int64_t per_block = ValuesPerBlock(pool);
  if (static_cast<int64_t>(values.size()) != per_block * static_cast<int64_t>(blocks.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat(values.size(), " values for ", blocks.size(), " blocks of ", per_block));
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    RETURN_IF_ERROR(CheckBlock(pool, blocks[i]));
    Tensor block = SliceRows(pool, blocks[i], 1);
    RETURN_IF_ERROR(ops.Upload(values.subspan(i * per_block, per_block), &block));
  }
  return absl::OkStatus();
}

std::string EncodeBlockValues(absl::Span<const float> values, DType dtype) {
  std::string bytes(values.size() * DTypeBytes(dtype), '\0');
  char* out = bytes.data();
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(out + 4 * i, &values[i], 4);
    } else if (dtype == DType::kBF16) {
      const uint16_t bits = F32ToBf16(values[i]);
      std::memcpy(out + 2 * i, &bits, 2);
    } else {
      out[i] = static_cast<char>(static_cast<uint8_t>(values[i]));
    }
  }
  return bytes;
}

absl::StatusOr<std::vector<float>> DecodeBlockValues(std::string_view bytes, std::string_view dtype_name,
                                                     DType pool_dtype) {
  absl::StatusOr<DType> dtype = ParseDType(dtype_name);
  if (!dtype.ok() || (*dtype != DType::kF32 && *dtype != DType::kBF16 && *dtype != DType::kU8)) {
    return absl::InvalidArgumentError(absl::StrCat("KV values of type \"", std::string(dtype_name), "\""));
  }
  if ((*dtype == DType::kU8) != (pool_dtype == DType::kU8)) {
    return absl::InvalidArgumentError(absl::StrCat("KV values of ", std::string(dtype_name), " for a pool of ",
                                                   std::string(DTypeName(pool_dtype)),
                                                   ": the caches are of different kinds"));
  }
  const size_t width = DTypeBytes(*dtype);
  if (bytes.size() % width != 0) {
    return absl::InvalidArgumentError(absl::StrCat(bytes.size(), " bytes of ", std::string(dtype_name), " values"));
  }
  std::vector<float> values(bytes.size() / width);
  ConvertToF32(*dtype, bytes.data(), values.size(), values.data());
  return values;
}

namespace {

// Where block `block` of `pool` starts.
uint8_t* BlockData(const Tensor& pool, int32_t block) {
  return static_cast<uint8_t*>(pool.data) + static_cast<size_t>(block) * ValuesPerBlock(pool) * DTypeBytes(pool.dtype);
}

}  // namespace

absl::Status SendBlocks(Communicator& link, const Tensor& pool, absl::Span<const int32_t> blocks, int peer) {
  std::vector<const void*> buffers;
  for (int32_t block : blocks) {
    RETURN_IF_ERROR(CheckBlock(pool, block));
    buffers.push_back(BlockData(pool, block));
  }
  return link.SendBatch(buffers, ValuesPerBlock(pool), pool.dtype, peer);
}

absl::Status RecvBlocks(Communicator& link, Tensor& pool, absl::Span<const int32_t> blocks, int peer) {
  std::vector<void*> buffers;
  for (int32_t block : blocks) {
    RETURN_IF_ERROR(CheckBlock(pool, block));
    buffers.push_back(BlockData(pool, block));
  }
  return link.RecvBatch(buffers, ValuesPerBlock(pool), pool.dtype, peer);
}

}  // namespace mlaserve
