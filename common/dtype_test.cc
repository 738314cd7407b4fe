#include "common/dtype.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }

// Reference decoders written from the format definitions with pow(), so they
// share no code path with the bit-twiddling implementation.
double F8Reference(uint8_t b) {
  const double sign = (b & 0x80) ? -1.0 : 1.0;
  const int e = (b >> 3) & 0xf;
  const int m = b & 0x7;
  if (e == 0xf && m == 0x7) return std::numeric_limits<double>::quiet_NaN();
  if (e == 0) return sign * (m / 8.0) * std::pow(2.0, -6);
  return sign * (1.0 + m / 8.0) * std::pow(2.0, e - 7);
}

double F16Reference(uint16_t h) {
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  const int e = (h >> 10) & 0x1f;
  const int m = h & 0x3ff;
  if (e == 0x1f) {
    return m == 0 ? sign * std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  }
  if (e == 0) return sign * (m / 1024.0) * std::pow(2.0, -14);
  return sign * (1.0 + m / 1024.0) * std::pow(2.0, e - 15);
}

TEST(DTypeTest, NamesRoundTrip) {
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3, DType::kI64, DType::kI32,
                  DType::kI16, DType::kI8, DType::kU8, DType::kBool, DType::kF64}) {
    absl::StatusOr<DType> parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.ok()) << DTypeName(d);
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(DTypeName(DType::kF8E4M3), "F8_E4M3");
  EXPECT_EQ(DTypeName(DType::kBool), "BOOL");
}

TEST(DTypeTest, UnknownNameIsError) {
  for (const char* name : {"", "f32", "F8_E5M2", "FLOAT", "BF16 "}) {
    absl::StatusOr<DType> parsed = ParseDType(name);
    EXPECT_FALSE(parsed.ok()) << name;
  }
  EXPECT_NE(ParseDType("F8_E5M2").status().message().find("F8_E5M2"), std::string_view::npos);
}

TEST(DTypeTest, SizesAndKinds) {
  EXPECT_EQ(DTypeBytes(DType::kF32), 4u);
  EXPECT_EQ(DTypeBytes(DType::kF16), 2u);
  EXPECT_EQ(DTypeBytes(DType::kBF16), 2u);
  EXPECT_EQ(DTypeBytes(DType::kF8E4M3), 1u);
  EXPECT_EQ(DTypeBytes(DType::kF64), 8u);
  EXPECT_EQ(DTypeBytes(DType::kI64), 8u);
  EXPECT_EQ(DTypeBytes(DType::kI32), 4u);
  EXPECT_EQ(DTypeBytes(DType::kI16), 2u);
  EXPECT_EQ(DTypeBytes(DType::kI8), 1u);
  EXPECT_EQ(DTypeBytes(DType::kU8), 1u);
  EXPECT_EQ(DTypeBytes(DType::kBool), 1u);
  EXPECT_TRUE(IsFloatingPoint(DType::kF8E4M3));
  EXPECT_TRUE(IsFloatingPoint(DType::kF64));
  EXPECT_FALSE(IsFloatingPoint(DType::kI64));
  EXPECT_FALSE(IsFloatingPoint(DType::kBool));
}

TEST(DTypeTest, F8E4M3AllValues) {
  for (int b = 0; b < 256; ++b) {
    const float got = F8E4M3ToF32(static_cast<uint8_t>(b));
    const double want = F8Reference(static_cast<uint8_t>(b));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "byte " << b;
      continue;
    }
    EXPECT_EQ(static_cast<double>(got), want) << "byte " << b;
    EXPECT_EQ(std::signbit(got), (b & 0x80) != 0) << "byte " << b;
  }
}

TEST(DTypeTest, F8E4M3KnownValues) {
  EXPECT_EQ(F8E4M3ToF32(0x7e), 448.0f);   // largest finite
  EXPECT_EQ(F8E4M3ToF32(0xfe), -448.0f);
  EXPECT_EQ(F8E4M3ToF32(0x38), 1.0f);
  EXPECT_EQ(F8E4M3ToF32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(F8E4M3ToF32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(F8E4M3ToF32(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(Bits(F8E4M3ToF32(0x80)), 0x80000000u);  // -0
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0x7f)));
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0xff)));
  EXPECT_FALSE(std::isnan(F8E4M3ToF32(0x78)));  // e=15 is still finite in e4m3fn
  EXPECT_EQ(F8E4M3ToF32(0x78), 256.0f);
}

TEST(DTypeTest, F16AllValues) {
  for (int h = 0; h < 65536; ++h) {
    const float got = F16ToF32(static_cast<uint16_t>(h));
    const double want = F16Reference(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << "bits " << h;
      continue;
    }
    ASSERT_EQ(static_cast<double>(got), want) << "bits " << h;
    ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << "bits " << h;
  }
}

TEST(DTypeTest, F16SpecialValues) {
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToF32(0x03ff), 1023 * std::ldexp(1.0f, -24));  // largest subnormal
  EXPECT_EQ(F16ToF32(0x0400), std::ldexp(1.0f, -14));         // smallest normal
  EXPECT_EQ(Bits(F16ToF32(0x8000)), 0x80000000u);
  EXPECT_EQ(F16ToF32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7c01)));  // signalling NaN must not turn into inf
  EXPECT_TRUE(std::isnan(F16ToF32(0xfe00)));
}

TEST(DTypeTest, Bf16ToF32IsExactWidening) {
  EXPECT_EQ(Bf16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(Bf16ToF32(0xc040), -3.0f);
  EXPECT_EQ(Bf16ToF32(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Bf16ToF32(0x7fc0)));
  EXPECT_EQ(Bf16ToF32(0x0001), std::ldexp(1.0f, -133));  // subnormal
}

TEST(DTypeTest, Bf16RoundTripsEveryValue) {
  for (int b = 0; b < 65536; ++b) {
    const float f = Bf16ToF32(static_cast<uint16_t>(b));
    const uint16_t back = F32ToBf16(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(Bf16ToF32(back))) << b;
      ASSERT_EQ(back & 0x8000, b & 0x8000) << b;
    } else {
      ASSERT_EQ(back, b) << b;
    }
  }
}

TEST(DTypeTest, F32ToBf16RoundsToNearestEven) {
  const float ulp = std::ldexp(1.0f, -7);  // bf16 spacing just above 1.0
  // Exact ties go to the even mantissa.
  EXPECT_EQ(F32ToBf16(1.0f + ulp / 2), 0x3f80);          // 1.0 (even) vs 1.0+ulp (odd)
  EXPECT_EQ(F32ToBf16(1.0f + 3 * ulp / 2), 0x3f82);      // 1+ulp (odd) vs 1+2ulp (even)
  EXPECT_EQ(F32ToBf16(-(1.0f + ulp / 2)), 0xbf80);
  EXPECT_EQ(F32ToBf16(-(1.0f + 3 * ulp / 2)), 0xbf82);
  // Off the tie, nearest wins.
  EXPECT_EQ(F32ToBf16(std::nextafter(1.0f + ulp / 2, 2.0f)), 0x3f81);
  EXPECT_EQ(F32ToBf16(std::nextafter(1.0f + 3 * ulp / 2, 0.0f)), 0x3f81);
  EXPECT_EQ(F32ToBf16(1.0f + ulp / 4), 0x3f80);
  // A carry out of the mantissa bumps the exponent.
  EXPECT_EQ(F32ToBf16(std::nextafter(2.0f, 0.0f)), 0x4000);
  // Overflow rounds to infinity; infinities and zeros are preserved.
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(F32ToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(F32ToBf16(0.0f), 0x0000);
  EXPECT_EQ(F32ToBf16(-0.0f), 0x8000);
  // Subnormal tie: 0x00008000 sits halfway between 0x0000 and 0x0001.
  EXPECT_EQ(F32ToBf16(std::bit_cast<float>(0x00008000u)), 0x0000);
  EXPECT_EQ(F32ToBf16(std::bit_cast<float>(0x00018000u)), 0x0002);
}

TEST(DTypeTest, F32ToBf16KeepsNaN) {
  // Payload only in the low 16 bits: truncation alone would yield infinity.
  const uint16_t low_payload = F32ToBf16(std::bit_cast<float>(0x7f800001u));
  EXPECT_TRUE(std::isnan(Bf16ToF32(low_payload)));
  const uint16_t negative = F32ToBf16(std::bit_cast<float>(0xffc00000u));
  EXPECT_TRUE(std::isnan(Bf16ToF32(negative)));
  EXPECT_EQ(negative & 0x8000, 0x8000);
  // The largest NaN payload must not carry into the sign bit.
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::bit_cast<float>(0x7fffffffu)))));
  EXPECT_EQ(F32ToBf16(std::bit_cast<float>(0x7fffffffu)) & 0x8000, 0);
}

template <typename T>
std::vector<uint8_t> RawBytes(const std::vector<T>& values, size_t offset) {
  const size_t n = values.size() * sizeof(T);
  std::vector<uint8_t> bytes(offset + n);
  if (n > 0) std::memcpy(bytes.data() + offset, values.data(), n);
  return bytes;
}

template <typename T>
std::vector<float> Convert(DType dtype, const std::vector<T>& values) {
  // One byte of offset makes the source misaligned on purpose.
  std::vector<uint8_t> bytes = RawBytes(values, 1);
  std::vector<float> out(values.size());
  ConvertToF32(dtype, bytes.data() + 1, values.size(), out.data());
  return out;
}

TEST(DTypeTest, ConvertFloatingTypes) {
  EXPECT_EQ(Convert(DType::kF32, std::vector<float>{1.5f, -2.25f, 1e-30f}),
            (std::vector<float>{1.5f, -2.25f, 1e-30f}));
  EXPECT_EQ(Convert(DType::kF64, std::vector<double>{0.5, -1e10, 3.0}), (std::vector<float>{0.5f, -1e10f, 3.0f}));
  EXPECT_EQ(Convert(DType::kF16, std::vector<uint16_t>{0x3c00, 0xc000, 0x0001}),
            (std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24)}));
  EXPECT_EQ(Convert(DType::kBF16, std::vector<uint16_t>{0x3f80, 0xc040}), (std::vector<float>{1.0f, -3.0f}));
  EXPECT_EQ(Convert(DType::kF8E4M3, std::vector<uint8_t>{0x38, 0x7e, 0xb8}), (std::vector<float>{1.0f, 448.0f, -1.0f}));
}

TEST(DTypeTest, ConvertIntegerTypes) {
  EXPECT_EQ(Convert(DType::kI64, std::vector<int64_t>{-5, 0, int64_t{1} << 40}),
            (std::vector<float>{-5.0f, 0.0f, std::ldexp(1.0f, 40)}));
  EXPECT_EQ(Convert(DType::kI32, std::vector<int32_t>{-7, 123456}), (std::vector<float>{-7.0f, 123456.0f}));
  EXPECT_EQ(Convert(DType::kI16, std::vector<int16_t>{-32768, 32767}), (std::vector<float>{-32768.0f, 32767.0f}));
  EXPECT_EQ(Convert(DType::kI8, std::vector<int8_t>{-128, 127}), (std::vector<float>{-128.0f, 127.0f}));
  EXPECT_EQ(Convert(DType::kU8, std::vector<uint8_t>{0, 255}), (std::vector<float>{0.0f, 255.0f}));
  EXPECT_EQ(Convert(DType::kBool, std::vector<uint8_t>{0, 1, 7}), (std::vector<float>{0.0f, 1.0f, 1.0f}));
}

TEST(DTypeTest, ConvertZeroElementsTouchesNothing) {
  float sentinel = 42.0f;
  ConvertToF32(DType::kBF16, nullptr, 0, &sentinel);
  EXPECT_EQ(sentinel, 42.0f);
}

TEST(DtypeTest, F32ToF8E4M3RoundTripsEveryCodeAndRoundsToNearestEven) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;  // NaN
    EXPECT_EQ(F32ToF8E4M3(F8E4M3ToF32(static_cast<uint8_t>(code))), code) << code;
  }
  // Between adjacent codes: nearest wins, the exact midpoint goes to the even code.
  for (int code = 0; code < 0x7e; ++code) {
    const float lo = F8E4M3ToF32(code), hi = F8E4M3ToF32(code + 1), mid = (lo + hi) / 2;
    EXPECT_EQ(F32ToF8E4M3(lo + (hi - lo) * 0.25f), code);
    EXPECT_EQ(F32ToF8E4M3(lo + (hi - lo) * 0.75f), code + 1);
    EXPECT_EQ(F32ToF8E4M3(mid), (code % 2 == 0) ? code : code + 1);
  }
  EXPECT_EQ(F32ToF8E4M3(1e6f), 0x7e);  // saturates at 448
  EXPECT_EQ(F32ToF8E4M3(-1e6f), 0xfe);
  EXPECT_EQ(F32ToF8E4M3(std::nanf("")) & 0x7f, 0x7f);
}

}  // namespace
}  // namespace mlaserve
