#include "common/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace mlaserve {
namespace {

constexpr char kFixtureDir[] = "tests/testdata/tiny-deepseek-v3";
constexpr char kFixture[] = "tests/testdata/tiny-deepseek-v3/model.safetensors";

// A fresh directory under TEST_TMPDIR for one test.
std::string TempDir(const std::string& name) {
  const char* root = std::getenv("TEST_TMPDIR");
  std::filesystem::path dir = std::filesystem::path(root != nullptr ? root : "/tmp") / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), bytes.size());
}

std::string LengthPrefix(uint64_t n) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s;
}

// A file with the given header text and `data_bytes` zero bytes of data.
std::string WriteRaw(const std::string& path, const std::string& header, size_t data_bytes) {
  WriteAll(path, LengthPrefix(header.size()) + header + std::string(data_bytes, '\0'));
  return path;
}

template <typename T>
std::string Bytes(const std::vector<T>& values) {
  std::string s(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(s.data(), values.data(), s.size());
  return s;
}

bool Contains(absl::string_view haystack, absl::string_view needle) {
  return haystack.find(needle) != absl::string_view::npos;
}

// ---------------------------------------------------------------------------
// Round trips

TEST(SafetensorsTest, RoundTripEveryDType) {
  const std::string dir = TempDir("round_trip");
  const std::string path = dir + "/model.safetensors";
  std::vector<TensorToWrite> tensors = {
      F32Tensor("f32", {2, 3}, std::vector<float>{1, -2, 3.5f, 0, 1e-3f, -7}),
      {"f64", DType::kF64, {2}, Bytes(std::vector<double>{0.25, -8})},
      {"f16", DType::kF16, {3}, Bytes(std::vector<uint16_t>{0x3c00, 0xc000, 0x0001})},
      {"bf16", DType::kBF16, {1, 2}, Bytes(std::vector<uint16_t>{0x3f80, 0xc040})},
      {"i64", DType::kI64, {2}, Bytes(std::vector<int64_t>{-3, 1234567})},
      {"i32", DType::kI32, {1}, Bytes(std::vector<int32_t>{-9})},
      {"i16", DType::kI16, {2}, Bytes(std::vector<int16_t>{-300, 300})},
      {"i8", DType::kI8, {3}, Bytes(std::vector<int8_t>{-1, 0, 1})},
      {"u8", DType::kU8, {2}, Bytes(std::vector<uint8_t>{0, 200})},
      {"bool", DType::kBool, {3}, Bytes(std::vector<uint8_t>{1, 0, 1})},
      {"empty", DType::kF32, {0, 4}, ""},
      {"scalar", DType::kF32, {}, Bytes(std::vector<float>{2.5f})},
  };
  // Odd sizes of narrow types ahead of wide ones check the writer realigns.
  tensors.push_back({"f8", DType::kF8E4M3, {3}, Bytes(std::vector<uint8_t>{0x38, 0x7e, 0xb8})});
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}, {"note", "x"}}).ok());

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "x"}}));
  EXPECT_EQ((*file)->TensorNames().size(), tensors.size());
  for (const TensorToWrite& want : tensors) {
    const TensorView* got = (*file)->Find(want.name);
    ASSERT_NE(got, nullptr) << want.name;
    EXPECT_EQ(got->dtype, want.dtype) << want.name;
    EXPECT_EQ(got->shape, want.shape) << want.name;
    ASSERT_EQ(got->num_bytes, want.bytes.size()) << want.name;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(got->data), got->num_bytes), want.bytes) << want.name;
    if (got->num_bytes > 0) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(got->data) % DTypeBytes(got->dtype), 0u) << want.name << " misaligned";
    }
  }
  EXPECT_EQ((*file)->Find("missing"), nullptr);

  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const Checkpoint& ck = **checkpoint;
  EXPECT_EQ(*ck.ReadF32("f32", {2, 3}), (std::vector<float>{1, -2, 3.5f, 0, 1e-3f, -7}));
  EXPECT_EQ(*ck.ReadF32("f64", {2}), (std::vector<float>{0.25f, -8}));
  EXPECT_EQ(*ck.ReadF32("f16", {3}), (std::vector<float>{1, -2, std::ldexp(1.0f, -24)}));
  EXPECT_EQ(*ck.ReadF32("bf16", {1, 2}), (std::vector<float>{1, -3}));
  EXPECT_EQ(*ck.ReadF32("i64", {2}), (std::vector<float>{-3, 1234567}));
  EXPECT_EQ(*ck.ReadF32("i32", {1}), (std::vector<float>{-9}));
  EXPECT_EQ(*ck.ReadF32("i16", {2}), (std::vector<float>{-300, 300}));
  EXPECT_EQ(*ck.ReadF32("i8", {3}), (std::vector<float>{-1, 0, 1}));
  EXPECT_EQ(*ck.ReadF32("u8", {2}), (std::vector<float>{0, 200}));
  EXPECT_EQ(*ck.ReadF32("bool", {3}), (std::vector<float>{1, 0, 1}));
  EXPECT_EQ(*ck.ReadF32("scalar", {}), (std::vector<float>{2.5f}));
  EXPECT_TRUE(ck.ReadF32("empty", {0, 4})->empty());
}

TEST(SafetensorsTest, HeaderLayoutMatchesPythonLibrary) {
  const std::string path = TempDir("layout") + "/model.safetensors";
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"b", DType::kBF16, {3}, std::string(6, '\1')},
                                F32Tensor("a", {1}, std::vector<float>{1}),
                                {"c", DType::kU8, {1}, std::string(1, '\2')}},
                               {{"format", "pt"}})
                  .ok());
  const std::string bytes = ReadAll(path);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = bytes.substr(8, n);
  const size_t json_end = header.find_last_not_of(' ') + 1;
  EXPECT_EQ(header.substr(json_end), std::string(n - json_end, ' '));
  // Keys in offset order: metadata, then widest dtype first.
  EXPECT_EQ(header.substr(0, json_end),
            R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[4,10]},)"
            R"("c":{"dtype":"U8","shape":[1],"data_offsets":[10,11]}})");
  EXPECT_EQ(bytes.size(), 8 + n + 11);
}

TEST(SafetensorsTest, WriteRejectsBadTensors) {
  const std::string path = TempDir("write_bad") + "/x.safetensors";
  EXPECT_FALSE(WriteSafetensors(path, {{"t", DType::kF32, {3}, std::string(8, '\0')}}).ok());
  EXPECT_FALSE(WriteSafetensors(path, {{"t", DType::kF32, {-1}, ""}}).ok());
  EXPECT_FALSE(WriteSafetensors(path, {F32Tensor("t", {1}, std::vector<float>{1}),
                                       F32Tensor("t", {1}, std::vector<float>{2})})
                   .ok());
  EXPECT_FALSE(WriteSafetensors(path, {F32Tensor("__metadata__", {1}, std::vector<float>{1})}).ok());
  EXPECT_FALSE(WriteSafetensors(path, {F32Tensor("bad\xff utf8", {1}, std::vector<float>{1})}).ok());
  EXPECT_FALSE(WriteSafetensors(TempDir("write_bad") + "/no/such/dir/x.safetensors",
                                {F32Tensor("t", {1}, std::vector<float>{1})})
                   .ok());
}

// ---------------------------------------------------------------------------
// The real fixture

TEST(SafetensorsTest, ReadsFixture) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(kFixture);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  const TensorView* embed = (*file)->Find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->dtype, DType::kBF16);
  EXPECT_EQ(embed->shape, (std::vector<int64_t>{1024, 256}));
  EXPECT_EQ(embed->num_elements(), 1024 * 256);
  EXPECT_EQ(embed->num_bytes, 1024u * 256 * 2);
  const TensorView* bias = (*file)->Find("model.layers.1.mlp.gate.e_score_correction_bias");
  ASSERT_NE(bias, nullptr);
  EXPECT_EQ(bias->shape, (std::vector<int64_t>{16}));
}

// Decodes embed_tokens[row][col] straight from the file bytes, using only the
// header parsed by nlohmann and the bf16 layout (the top half of a float32).
float RawEmbedding(int64_t row, int64_t col) {
  const std::string bytes = ReadAll(kFixture);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  const uint64_t begin = header["model.embed_tokens.weight"]["data_offsets"][0].get<uint64_t>();
  uint16_t half;
  std::memcpy(&half, bytes.data() + 8 + n + begin + (row * 256 + col) * 2, 2);
  const uint32_t word = static_cast<uint32_t>(half) << 16;
  float value;
  std::memcpy(&value, &word, 4);
  return value;
}

TEST(SafetensorsTest, FixtureValuesMatchRawBytes) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(kFixtureDir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  absl::StatusOr<std::vector<float>> embed = (*checkpoint)->ReadF32("model.embed_tokens.weight", {1024, 256});
  ASSERT_TRUE(embed.ok()) << embed.status();
  for (auto [row, col] : {std::pair<int64_t, int64_t>{0, 0}, {3, 5}, {517, 200}, {1023, 255}}) {
    const float raw = RawEmbedding(row, col);
    EXPECT_EQ((*embed)[row * 256 + col], raw) << row << "," << col;
    absl::StatusOr<std::vector<float>> rows = (*checkpoint)->ReadRowsF32("model.embed_tokens.weight", {1024, 256}, row, row + 1);
    ASSERT_TRUE(rows.ok()) << rows.status();
    ASSERT_EQ(rows->size(), 256u);
    EXPECT_EQ((*rows)[col], raw);
  }
  EXPECT_NE(RawEmbedding(3, 5), 0.0f);  // random weights: a zero would hint at a wrong offset
  EXPECT_EQ((*checkpoint)->FileOf("model.embed_tokens.weight"), kFixture);
}

TEST(SafetensorsTest, EveryFixtureTensorReads) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(kFixture);
  ASSERT_TRUE(file.ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(kFixtureDir);
  ASSERT_TRUE(checkpoint.ok());
  for (const std::string& name : (*file)->TensorNames()) {
    const TensorView* view = (*file)->Find(name);
    absl::StatusOr<std::vector<float>> values = (*checkpoint)->ReadF32(name, view->shape);
    ASSERT_TRUE(values.ok()) << values.status();
    EXPECT_EQ(static_cast<int64_t>(values->size()), view->num_elements());
    for (float v : *values) ASSERT_TRUE(std::isfinite(v)) << name;
  }
}

TEST(SafetensorsTest, ShapeMismatchNamesTensorFileAndShapes) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(kFixtureDir);
  ASSERT_TRUE(checkpoint.ok());
  absl::StatusOr<std::vector<float>> values = (*checkpoint)->ReadF32("model.embed_tokens.weight", {256, 1024});
  ASSERT_FALSE(values.ok());
  EXPECT_EQ(values.status().code(), absl::StatusCode::kInvalidArgument);
  const absl::string_view message = values.status().message();
  EXPECT_TRUE(Contains(message, "model.embed_tokens.weight")) << message;
  EXPECT_TRUE(Contains(message, "model.safetensors")) << message;
  EXPECT_TRUE(Contains(message, "[256, 1024]")) << message;
  EXPECT_TRUE(Contains(message, "[1024, 256]")) << message;
  EXPECT_FALSE((*checkpoint)->ReadRowsF32("model.embed_tokens.weight", {1024}, 0, 1).ok());
}

// Columns [begin, end) of a row-major matrix with `cols` columns.
std::vector<float> ColumnsOf(const std::vector<float>& m, int64_t cols, int64_t begin, int64_t end) {
  std::vector<float> out;
  for (size_t r = 0; r < m.size() / cols; ++r) out.insert(out.end(), m.begin() + r * cols + begin, m.begin() + r * cols + end);
  return out;
}

TEST(SafetensorsTest, RowRanges) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(kFixtureDir);
  ASSERT_TRUE(checkpoint.ok());
  const Checkpoint& ck = **checkpoint;
  const std::string name = "model.embed_tokens.weight";
  std::vector<float> all = *ck.ReadF32(name, {1024, 256});
  absl::StatusOr<std::vector<float>> middle = ck.ReadRowsF32(name, {1024, 256}, 100, 300);
  ASSERT_TRUE(middle.ok());
  EXPECT_EQ(*middle, std::vector<float>(all.begin() + 100 * 256, all.begin() + 300 * 256));
  EXPECT_TRUE(ck.ReadRowsF32(name, {1024, 256}, 5, 5)->empty());
  for (auto [begin, end] : {std::pair<int64_t, int64_t>{-1, 3}, {0, 1025}, {10, 9}, {1024, 1025}}) {
    absl::StatusOr<std::vector<float>> bad = ck.ReadRowsF32(name, {1024, 256}, begin, end);
    ASSERT_FALSE(bad.ok()) << begin << ".." << end;
    EXPECT_TRUE(Contains(bad.status().message(), name));
  }
  absl::StatusOr<std::vector<float>> cols = ck.ReadColumnsF32(name, {1024, 256}, 17, 140);
  ASSERT_TRUE(cols.ok()) << cols.status();
  EXPECT_EQ(*cols, ColumnsOf(all, 256, 17, 140));
  EXPECT_TRUE(ck.ReadColumnsF32(name, {1024, 256}, 9, 9)->empty());
  for (auto [begin, end] : {std::pair<int64_t, int64_t>{-1, 3}, {0, 257}, {10, 9}}) {
    absl::StatusOr<std::vector<float>> bad = ck.ReadColumnsF32(name, {1024, 256}, begin, end);
    ASSERT_FALSE(bad.ok()) << begin << ".." << end;
    EXPECT_TRUE(Contains(bad.status().message(), name));
  }
  EXPECT_FALSE(ck.ReadColumnsF32("model.norm.weight", {256}, 0, 1).ok());
  // A 1-D tensor is read by elements.
  const std::string norm = "model.norm.weight";
  std::vector<float> norm_all = *ck.ReadF32(norm, {256});
  EXPECT_EQ(*ck.ReadRowsF32(norm, {256}, 10, 20), std::vector<float>(norm_all.begin() + 10, norm_all.begin() + 20));
}

TEST(SafetensorsTest, MissingTensorIsNotFound) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(kFixtureDir);
  ASSERT_TRUE(checkpoint.ok());
  EXPECT_FALSE((*checkpoint)->Has("no.such.tensor"));
  EXPECT_TRUE((*checkpoint)->Has("lm_head.weight"));
  absl::StatusOr<const TensorView*> missing = (*checkpoint)->Get("no.such.tensor");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(missing.status().message(), "no.such.tensor"));
  EXPECT_TRUE(Contains(missing.status().message(), kFixtureDir));
  EXPECT_FALSE((*checkpoint)->ReadF32("no.such.tensor", {1}).ok());
}

// ---------------------------------------------------------------------------
// FP8 block dequantization

struct Fp8Case {
  int64_t rows, cols, block_rows, block_cols;
  DType scale_dtype;
};

class Fp8Test : public ::testing::TestWithParam<Fp8Case> {};

TEST_P(Fp8Test, MatchesHandDequantization) {
  const Fp8Case c = GetParam();
  std::mt19937 rng(1234);
  std::vector<uint8_t> weight(c.rows * c.cols);
  for (uint8_t& w : weight) {
    do w = static_cast<uint8_t>(rng()); while ((w & 0x7f) == 0x7f);  // skip NaN codes
  }
  const int64_t scale_rows = (c.rows + c.block_rows - 1) / c.block_rows;
  const int64_t scale_cols = (c.cols + c.block_cols - 1) / c.block_cols;
  std::vector<float> scales(scale_rows * scale_cols);
  std::uniform_real_distribution<float> dist(1e-4f, 2.0f);
  std::string scale_bytes;
  for (float& s : scales) {
    s = dist(rng);
    if (c.scale_dtype == DType::kBF16) s = Bf16ToF32(F32ToBf16(s));  // what the file can hold
  }
  if (c.scale_dtype == DType::kBF16) {
    std::vector<uint16_t> halves;
    for (float s : scales) halves.push_back(F32ToBf16(s));
    scale_bytes = Bytes(halves);
  } else {
    scale_bytes = Bytes(scales);
  }
  const std::string dir = TempDir("fp8");
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors",
                               {{"w", DType::kF8E4M3, {c.rows, c.cols}, Bytes(weight)},
                                {"w_scale_inv", c.scale_dtype, {scale_rows, scale_cols}, scale_bytes}})
                  .ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok());
  (*checkpoint)->set_fp8_block(c.block_rows, c.block_cols);

  std::vector<float> want(c.rows * c.cols);
  for (int64_t r = 0; r < c.rows; ++r) {
    for (int64_t col = 0; col < c.cols; ++col) {
      const uint8_t b = weight[r * c.cols + col];
      const double sign = (b & 0x80) ? -1 : 1;
      const int e = (b >> 3) & 0xf, m = b & 7;
      const double value = e == 0 ? sign * m * std::pow(2.0, -9) : sign * (1 + m / 8.0) * std::pow(2.0, e - 7);
      want[r * c.cols + col] =
          static_cast<float>(value) * scales[(r / c.block_rows) * scale_cols + col / c.block_cols];
    }
  }
  absl::StatusOr<std::vector<float>> got = (*checkpoint)->ReadF32("w", {c.rows, c.cols});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(*got, want);

  const int64_t begin = c.rows / 3, end = c.rows - 1;
  absl::StatusOr<std::vector<float>> part = (*checkpoint)->ReadRowsF32("w", {c.rows, c.cols}, begin, end);
  ASSERT_TRUE(part.ok()) << part.status();
  EXPECT_EQ(*part, std::vector<float>(want.begin() + begin * c.cols, want.begin() + end * c.cols));

  const int64_t col_begin = c.cols / 3, col_end = c.cols - 1;
  absl::StatusOr<std::vector<float>> cols = (*checkpoint)->ReadColumnsF32("w", {c.rows, c.cols}, col_begin, col_end);
  ASSERT_TRUE(cols.ok()) << cols.status();
  EXPECT_EQ(*cols, ColumnsOf(want, c.cols, col_begin, col_end));
}

INSTANTIATE_TEST_SUITE_P(Shapes, Fp8Test,
                         ::testing::Values(Fp8Case{300, 200, 128, 128, DType::kF32},
                                           Fp8Case{130, 257, 128, 128, DType::kBF16},
                                           Fp8Case{128, 128, 128, 128, DType::kF32},
                                           Fp8Case{70, 45, 16, 32, DType::kF32},
                                           Fp8Case{5, 3, 128, 128, DType::kBF16}));

absl::Status ReadFp8WithScale(const std::string& test_name, const std::vector<TensorToWrite>& extra) {
  const std::string dir = TempDir(test_name);
  std::vector<TensorToWrite> tensors = {{"w", DType::kF8E4M3, {200, 130}, std::string(200 * 130, '\x38')}};
  tensors.insert(tensors.end(), extra.begin(), extra.end());
  if (!WriteSafetensors(dir + "/model.safetensors", tensors).ok()) return absl::InternalError("write failed");
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir);
  if (!checkpoint.ok()) return checkpoint.status();
  return (*checkpoint)->ReadF32("w", {200, 130}).status();
}

TEST(Fp8ScaleTest, GoodScaleReads) {
  EXPECT_TRUE(ReadFp8WithScale("fp8_good", {F32Tensor("w_scale_inv", {2, 2}, std::vector<float>(4, 0.5f))}).ok());
}

TEST(Fp8ScaleTest, MissingScaleIsError) {
  absl::Status status = ReadFp8WithScale("fp8_missing", {});
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(Contains(status.message(), "w_scale_inv")) << status;
  EXPECT_TRUE(Contains(status.message(), "model.safetensors")) << status;
}

TEST(Fp8ScaleTest, WrongScaleShapeIsError) {
  absl::Status status =
      ReadFp8WithScale("fp8_shape", {F32Tensor("w_scale_inv", {2, 1}, std::vector<float>(2, 0.5f))});
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(Contains(status.message(), "w_scale_inv")) << status;
  EXPECT_TRUE(Contains(status.message(), "[2, 2]")) << status;
}

TEST(Fp8ScaleTest, WrongScaleDTypeIsError) {
  absl::Status status =
      ReadFp8WithScale("fp8_dtype", {{"w_scale_inv", DType::kI32, {2, 2}, std::string(16, '\0')}});
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(Contains(status.message(), "w_scale_inv")) << status;
}

// ---------------------------------------------------------------------------
// Sharded checkpoints

class ShardedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    ASSERT_TRUE(WriteSafetensors(dir_ + "/model-00001-of-00002.safetensors",
                                 {F32Tensor("a", {2, 2}, std::vector<float>{1, 2, 3, 4}),
                                  F32Tensor("b", {3}, std::vector<float>{5, 6, 7})})
                    .ok());
    ASSERT_TRUE(WriteSafetensors(dir_ + "/model-00002-of-00002.safetensors",
                                 {F32Tensor("c", {1}, std::vector<float>{8}),
                                  F32Tensor("unlisted", {1}, std::vector<float>{9})})
                    .ok());
  }
  void WriteIndex(const nlohmann::json& weight_map) {
    WriteAll(dir_ + "/model.safetensors.index.json",
             nlohmann::json{{"metadata", {{"total_size", 32}}}, {"weight_map", weight_map}}.dump());
  }
  std::string dir_;
};

TEST_F(ShardedTest, OpensShardsFromIndex) {
  WriteIndex({{"a", "model-00001-of-00002.safetensors"},
              {"b", "model-00001-of-00002.safetensors"},
              {"c", "model-00002-of-00002.safetensors"}});
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const Checkpoint& ck = **checkpoint;
  EXPECT_EQ(*ck.ReadF32("a", {2, 2}), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(*ck.ReadF32("b", {3}), (std::vector<float>{5, 6, 7}));
  EXPECT_EQ(*ck.ReadF32("c", {1}), (std::vector<float>{8}));
  EXPECT_EQ(*ck.ReadRowsF32("a", {2, 2}, 1, 2), (std::vector<float>{3, 4}));
  EXPECT_EQ(ck.FileOf("a"), dir_ + "/model-00001-of-00002.safetensors");
  EXPECT_EQ(ck.FileOf("c"), dir_ + "/model-00002-of-00002.safetensors");
  EXPECT_FALSE(ck.Has("unlisted"));  // the index decides what the checkpoint holds
}

TEST_F(ShardedTest, IndexWinsOverSingleFile) {
  ASSERT_TRUE(WriteSafetensors(dir_ + "/model.safetensors", {F32Tensor("z", {1}, std::vector<float>{0})}).ok());
  WriteIndex({{"a", "model-00001-of-00002.safetensors"}});
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok());
  EXPECT_TRUE((*checkpoint)->Has("a"));
  EXPECT_FALSE((*checkpoint)->Has("z"));
}

TEST_F(ShardedTest, ListedTensorMissingFromShardIsNotFound) {
  WriteIndex({{"a", "model-00001-of-00002.safetensors"}, {"ghost", "model-00002-of-00002.safetensors"}});
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir_);
  ASSERT_FALSE(checkpoint.ok());
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(checkpoint.status().message(), "ghost")) << checkpoint.status();
  EXPECT_TRUE(Contains(checkpoint.status().message(), "model-00002-of-00002.safetensors")) << checkpoint.status();
}

TEST_F(ShardedTest, MissingShardFileIsError) {
  WriteIndex({{"a", "model-00009-of-00009.safetensors"}});
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir_);
  ASSERT_FALSE(checkpoint.ok());
  EXPECT_TRUE(Contains(checkpoint.status().message(), "model-00009-of-00009.safetensors")) << checkpoint.status();
}

TEST_F(ShardedTest, MalformedIndexIsError) {
  for (const std::string& text : {std::string("{not json"), std::string("[]"), std::string("{}"),
                                  std::string(R"({"weight_map": []})"), std::string(R"({"weight_map": {"a": 3}})"),
                                  std::string(R"({"weight_map": {}})")}) {
    WriteAll(dir_ + "/model.safetensors.index.json", text);
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir_);
    ASSERT_FALSE(checkpoint.ok()) << text;
    EXPECT_TRUE(Contains(checkpoint.status().message(), "model.safetensors.index.json")) << checkpoint.status();
  }
}

TEST(CheckpointTest, EmptyDirectoryIsError) {
  const std::string dir = TempDir("empty_dir");
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir);
  ASSERT_FALSE(checkpoint.ok());
  EXPECT_TRUE(Contains(checkpoint.status().message(), dir));
  EXPECT_FALSE(Checkpoint::Open(dir + "/does-not-exist").ok());
}

// ---------------------------------------------------------------------------
// Corrupt files: each must be rejected with the path in the message.

class CorruptFileTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = TempDir(::testing::UnitTest::GetInstance()->current_test_info()->name()); }

  // Opens `path` and checks it fails naming the file and `detail`.
  void ExpectRejected(const std::string& path, absl::string_view detail) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << path;
    const absl::StatusCode code = file.status().code();
    EXPECT_TRUE(code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kDataLoss) << file.status();
    EXPECT_TRUE(Contains(file.status().message(), path)) << file.status();
    EXPECT_TRUE(Contains(file.status().message(), detail)) << file.status();
  }
  void ExpectHeaderRejected(const std::string& header, size_t data_bytes, absl::string_view detail) {
    ExpectRejected(WriteRaw(dir_ + "/bad.safetensors", header, data_bytes), detail);
  }
  std::string dir_;
};

TEST_F(CorruptFileTest, ShorterThanLengthPrefix) {
  const std::string path = dir_ + "/short.safetensors";
  WriteAll(path, "abc");
  ExpectRejected(path, "");
  WriteAll(path, "");
  ExpectRejected(path, "");
}

TEST_F(CorruptFileTest, HeaderLengthPastEnd) {
  const std::string path = dir_ + "/long.safetensors";
  WriteAll(path, LengthPrefix(1000) + "{}");
  ExpectRejected(path, "1000");
  WriteAll(path, LengthPrefix(~uint64_t{0}) + "{}");
  ExpectRejected(path, "");
}

TEST_F(CorruptFileTest, HeaderNotJson) {
  ExpectHeaderRejected("{\"a\": {", 0, "JSON");
  ExpectHeaderRejected("", 0, "JSON");
  ExpectHeaderRejected(std::string("{\0}", 3), 0, "JSON");
}

TEST_F(CorruptFileTest, HeaderNotObject) {
  ExpectHeaderRejected("[1, 2]", 0, "object");
  ExpectHeaderRejected("\"str\"", 0, "object");
  ExpectHeaderRejected("null", 0, "object");
}

TEST_F(CorruptFileTest, EntryMissingFields) {
  ExpectHeaderRejected(R"({"t": {"shape": [1], "data_offsets": [0, 4]}})", 4, "\"t\"");
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "data_offsets": [0, 4]}})", 4, "shape");
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "shape": [1]}})", 4, "data_offsets");
  ExpectHeaderRejected(R"({"t": 5})", 4, "\"t\"");
}

TEST_F(CorruptFileTest, EntryWrongTypes) {
  ExpectHeaderRejected(R"({"t": {"dtype": 1, "shape": [1], "data_offsets": [0, 4]}})", 4, "dtype");
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}})", 4, "shape");
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4, "shape");
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}})", 4, "shape");
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 8, "data_offsets");
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, -4]}})", 4, "data_offsets");
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": {"a": 1}}})", 4, "data_offsets");
  ExpectHeaderRejected(R"({"__metadata__": {"k": 1}})", 0, "__metadata__");
  ExpectHeaderRejected(R"({"__metadata__": [1]})", 0, "__metadata__");
}

TEST_F(CorruptFileTest, UnknownDType) {
  ExpectHeaderRejected(R"({"t": {"dtype": "F7", "shape": [1], "data_offsets": [0, 4]}})", 4, "F7");
}

TEST_F(CorruptFileTest, NegativeShape) {
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 4]}})", 4, "negative");
}

TEST_F(CorruptFileTest, ByteLengthMismatch) {
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 24, "\"t\"");
  // A product that overflows 64 bits must not wrap around to a match.
  ExpectHeaderRejected(
      R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", 0, "\"t\"");
}

TEST_F(CorruptFileTest, OffsetsOutOfRange) {
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 4, "\"t\"");
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [18446744073709551612, 0]}})", 4,
                       "\"t\"");
}

TEST_F(CorruptFileTest, BeginAfterEnd) {
  ExpectHeaderRejected(R"({"t": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8, "\"t\"");
}

TEST_F(CorruptFileTest, OverlappingTensors) {
  ExpectHeaderRejected(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                       R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                       12, "overlaps");
}

TEST_F(CorruptFileTest, DeeplyNestedHeaderDoesNotCrash) {
  ExpectHeaderRejected(std::string(200000, '['), 0, "JSON");
  ExpectHeaderRejected(std::string(100000, '[') + std::string(100000, ']'), 0, "object");
}

TEST_F(CorruptFileTest, DirectoryIsNotAFile) { ExpectRejected(dir_, "regular file"); }

TEST_F(CorruptFileTest, TruncatedFixture) {
  const std::string bytes = ReadAll(kFixture);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  const std::string path = dir_ + "/truncated.safetensors";
  for (size_t length : {size_t{0}, size_t{4}, size_t{7}, size_t{8}, size_t{100}, size_t(n / 2), size_t(n + 7),
                        size_t(n + 8), size_t(n + 8 + 1000), bytes.size() / 2, bytes.size() - 1}) {
    WriteAll(path, bytes.substr(0, length));
    SCOPED_TRACE(length);
    ExpectRejected(path, "");
  }
}

TEST_F(CorruptFileTest, RandomHeaderByteFlipsNeverCrash) {
  const std::string original = ReadAll(kFixture);
  uint64_t n;
  std::memcpy(&n, original.data(), 8);
  const std::string path = dir_ + "/flipped.safetensors";
  WriteAll(path, original);
  // Flips touch only the length prefix and header, patched in place so each
  // trial does not rewrite the whole file.
  const int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  std::mt19937 rng(20240611);
  int rejected = 0;
  constexpr int kTrials = 300;
  for (int trial = 0; trial < kTrials; ++trial) {
    std::string header = original.substr(0, 8 + n);
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      // Mostly the JSON, sometimes the length prefix.
      const size_t pos = (rng() % 8 == 0) ? rng() % 8 : 8 + rng() % n;
      header[pos] = static_cast<char>(header[pos] ^ (1 << (rng() % 8)));
    }
    ASSERT_EQ(::pwrite(fd, header.data(), header.size(), 0), static_cast<ssize_t>(header.size()));
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    if (!file.ok()) {
      ++rejected;
      EXPECT_TRUE(Contains(file.status().message(), path)) << file.status();
    }
  }
  ::close(fd);
  RecordProperty("rejected", rejected);
  // A flip inside a tensor name or a shape digit that happens to keep sizes
  // consistent can leave a valid file; most flips must be caught.
  EXPECT_GT(rejected, kTrials / 2);
}

}  // namespace
}  // namespace mlaserve
