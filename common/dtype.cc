#include "common/dtype.h"

#include <array>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mlaserve {
namespace {

// Checkpoint bytes are little-endian; reinterpreting them in place needs a
// little-endian host.
static_assert(std::endian::native == std::endian::little, "mlaserve assumes a little-endian host");

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t bytes;
  bool floating;
};

constexpr std::array<DTypeInfo, 11> kDTypes = {{
    {DType::kF32, "F32", 4, true},
    {DType::kF16, "F16", 2, true},
    {DType::kBF16, "BF16", 2, true},
    {DType::kF8E4M3, "F8_E4M3", 1, true},
    {DType::kI64, "I64", 8, false},
    {DType::kI32, "I32", 4, false},
    {DType::kI16, "I16", 2, false},
    {DType::kI8, "I8", 1, false},
    {DType::kU8, "U8", 1, false},
    {DType::kBool, "BOOL", 1, false},
    {DType::kF64, "F64", 8, true},
}};

const DTypeInfo& Info(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  // Every enumerator is in the table; reaching here means memory corruption.
  std::abort();
}

float BitsToF32(uint32_t bits) { return std::bit_cast<float>(bits); }

// e4m3fn has only 256 values, so a table turns dequantization into one load.
std::array<float, 256> MakeF8Table() {
  std::array<float, 256> table{};
  for (int b = 0; b < 256; ++b) {
    const uint32_t sign = static_cast<uint32_t>(b & 0x80) << 24;
    const int exponent = (b >> 3) & 0xf;
    const int mantissa = b & 0x7;
    float magnitude;
    if (exponent == 0xf && mantissa == 0x7) {
      magnitude = std::numeric_limits<float>::quiet_NaN();
    } else if (exponent == 0) {
      magnitude = std::ldexp(static_cast<float>(mantissa), -9);  // subnormal: m * 2^(1-7-3)
    } else {
      // Rebias the exponent (7 -> 127) and widen the 3-bit mantissa to 23 bits.
      magnitude = BitsToF32(static_cast<uint32_t>(exponent - 7 + 127) << 23 |
                            static_cast<uint32_t>(mantissa) << 20);
    }
    table[b] = BitsToF32(std::bit_cast<uint32_t>(magnitude) | sign);
  }
  return table;
}

// Loads one element with memcpy: mapped tensors need not be aligned.
template <typename T>
T Load(const uint8_t* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

template <typename T>
void ConvertIntegers(const uint8_t* src, size_t n, float* dst) {
  for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(Load<T>(src + i * sizeof(T)));
}

}  // namespace

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype \"", std::string(name), "\""));
}

std::string_view DTypeName(DType dtype) { return Info(dtype).name; }
size_t DTypeBytes(DType dtype) { return Info(dtype).bytes; }
bool IsFloatingPoint(DType dtype) { return Info(dtype).floating; }

float Bf16ToF32(uint16_t bits) { return BitsToF32(static_cast<uint32_t>(bits) << 16); }

uint16_t F32ToBf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if (std::isnan(value)) {
    // Truncating could clear every mantissa bit and turn NaN into infinity;
    // keep the sign and force the quiet bit instead.
    return static_cast<uint16_t>((bits >> 16) | 0x0040);
  }
  // Adding 0x7fff plus the lowest kept bit rounds half to even; a carry into
  // the exponent is the correct result (up to infinity on overflow).
  const uint32_t rounding = 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float F16ToF32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ff;
  if (exponent == 0) {
    // Zero or subnormal: m * 2^-24 is exact in float32.
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return BitsToF32(std::bit_cast<uint32_t>(magnitude) | sign);
  }
  if (exponent == 0x1f) {
    // Infinity or NaN; the payload moves to the top of the wider mantissa.
    return BitsToF32(sign | 0x7f800000u | mantissa << 13);
  }
  return BitsToF32(sign | (exponent - 15 + 127) << 23 | mantissa << 13);
}

float F8E4M3ToF32(uint8_t bits) {
  static const std::array<float, 256> kTable = MakeF8Table();
  return kTable[bits];
}

uint8_t F32ToF8E4M3(float value) {
  if (std::isnan(value)) return 0x7f;
  const uint8_t sign = std::signbit(value) ? 0x80 : 0x00;
  const float magnitude = std::fabs(value);
  // Positive codes 0x00..0x7e increase monotonically: find the nearest by bisection.
  uint8_t lo = 0, hi = 0x7e;
  if (magnitude >= F8E4M3ToF32(hi)) return sign | hi;
  while (hi - lo > 1) {
    const uint8_t mid = (lo + hi) / 2;
    (F8E4M3ToF32(mid) <= magnitude ? lo : hi) = mid;
  }
  const float below = magnitude - F8E4M3ToF32(lo), above = F8E4M3ToF32(hi) - magnitude;
  const bool pick_hi = above < below || (above == below && (hi & 1) == 0);
  return sign | (pick_hi ? hi : lo);
}

void ConvertToF32(DType dtype, const void* src, size_t num_elements, float* dst) {
  if (num_elements == 0) return;  // src may be null for empty tensors
  const auto* p = static_cast<const uint8_t*>(src);
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, p, num_elements * sizeof(float));
      return;
    case DType::kF16:
      for (size_t i = 0; i < num_elements; ++i) dst[i] = F16ToF32(Load<uint16_t>(p + 2 * i));
      return;
    case DType::kBF16:
      for (size_t i = 0; i < num_elements; ++i) dst[i] = Bf16ToF32(Load<uint16_t>(p + 2 * i));
      return;
    case DType::kF8E4M3:
      for (size_t i = 0; i < num_elements; ++i) dst[i] = F8E4M3ToF32(p[i]);
      return;
    case DType::kF64:
      for (size_t i = 0; i < num_elements; ++i) dst[i] = static_cast<float>(Load<double>(p + 8 * i));
      return;
    case DType::kI64:
      return ConvertIntegers<int64_t>(p, num_elements, dst);
    case DType::kI32:
      return ConvertIntegers<int32_t>(p, num_elements, dst);
    case DType::kI16:
      return ConvertIntegers<int16_t>(p, num_elements, dst);
    case DType::kI8:
      return ConvertIntegers<int8_t>(p, num_elements, dst);
    case DType::kU8:
      return ConvertIntegers<uint8_t>(p, num_elements, dst);
    case DType::kBool:
      // Any nonzero byte is true, as numpy reads it.
      for (size_t i = 0; i < num_elements; ++i) dst[i] = p[i] != 0 ? 1.0f : 0.0f;
      return;
  }
}

}  // namespace mlaserve
