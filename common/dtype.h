// Element types of checkpoint tensors and the host-side conversions to float32.
// The CPU reference computes in float32; these are the only places that know
// the bit layouts of bf16, fp16 and fp8 (e4m3fn, as DeepSeek-V3 checkpoints store it).
#ifndef MLASERVE_COMMON_DTYPE_H_
#define MLASERVE_COMMON_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace mlaserve {

enum class DType { kF32, kF16, kBF16, kF8E4M3, kI64, kI32, kI16, kI8, kU8, kBool, kF64 };

// "F32", "BF16", "F8_E4M3", ... as safetensors spells them.
absl::StatusOr<DType> ParseDType(std::string_view name);
std::string_view DTypeName(DType dtype);
size_t DTypeBytes(DType dtype);
bool IsFloatingPoint(DType dtype);

float Bf16ToF32(uint16_t bits);
uint16_t F32ToBf16(float value);  // round to nearest even, NaN stays NaN
float F16ToF32(uint16_t bits);
float F8E4M3ToF32(uint8_t bits);  // e4m3fn: no infinities, 0x7f/0xff are NaN
// Nearest e4m3fn value (ties to even), saturating at +-448; NaN stays NaN.
uint8_t F32ToF8E4M3(float value);

// Converts `num_elements` floating-point or integer values at `src` to float32.
void ConvertToF32(DType dtype, const void* src, size_t num_elements, float* dst);

}  // namespace mlaserve

#endif  // MLASERVE_COMMON_DTYPE_H_
