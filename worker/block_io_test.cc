// The wire form of KV blocks over TCP: values cross in the source pool's
// element type, and come back as the same float32 values.
#include "worker/block_io.h"

#include <random>

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

TEST(BlockIoTest, ValuesCrossInThePoolsTypeExactly) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> f32(1000), bf16(1000), bytes(1000);
  for (size_t i = 0; i < f32.size(); ++i) {
    f32[i] = normal(rng);
    bf16[i] = Bf16ToF32(F32ToBf16(normal(rng)));  // as a bf16 pool holds them
    bytes[i] = static_cast<float>(rng() % 256);    // an FP8 pool's bytes
  }
  for (const auto& [values, dtype] : {std::pair{&f32, DType::kF32}, std::pair{&bf16, DType::kBF16},
                                      std::pair{&bytes, DType::kU8}}) {
    const std::string wire = EncodeBlockValues(*values, dtype);
    EXPECT_EQ(wire.size(), values->size() * DTypeBytes(dtype)) << DTypeName(dtype);
    absl::StatusOr<std::vector<float>> back = DecodeBlockValues(wire, DTypeName(dtype), dtype);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, *values) << DTypeName(dtype);
  }
  // A bf16 pool's values into a float32 pool (a CPU worker pulling from a GPU's).
  absl::StatusOr<std::vector<float>> widened =
      DecodeBlockValues(EncodeBlockValues(bf16, DType::kBF16), "BF16", DType::kF32);
  ASSERT_TRUE(widened.ok());
  EXPECT_EQ(*widened, bf16);
}

TEST(BlockIoTest, RefusesValuesThatDoNotFitThePool) {
  const std::string wire = EncodeBlockValues({1.0f, 2.0f}, DType::kF32);
  EXPECT_EQ(DecodeBlockValues(wire, "U8", DType::kF32).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeBlockValues(wire, "F32", DType::kU8).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeBlockValues(wire, "I64", DType::kF32).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeBlockValues(wire, "", DType::kF32).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeBlockValues(wire.substr(0, 7), "F32", DType::kF32).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mlaserve
