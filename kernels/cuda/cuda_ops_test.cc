// CudaOps against the CPU reference (kernels/cpu): every op (FP8 weights too) on fresh random
// inputs (the seed is printed), the same float values uploaded to both
// backends (rounded to bf16 first, so that copies must match exactly),
// outputs poisoned before each op so that unwritten elements show, relative
// error ||out - ref|| / ||ref|| under 1e-2 (bf16). Then batch invariance
// (a row's result does not depend on its batch) and the whole tiny
// DeepSeek-V3 model on both backends. Needs a Hopper GPU.
#include "kernels/cuda/cuda_ops.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/cpu/bf16_storage_ops.h"
#include "kernels/latent_row.h"
#include "kernels/ops.h"
#include "worker/kv_cache.h"
#include "worker/model.h"
#include "worker/model_runner.h"
#include "worker/random_checkpoint.h"

namespace mlaserve {
namespace {

#define EXPECT_OK(expr)                          \
  do {                                           \
    const absl::Status status_ = (expr);         \
    EXPECT_TRUE(status_.ok()) << status_;        \
  } while (0)
#define ASSERT_OK(expr)                          \
  do {                                           \
    const absl::Status status_ = (expr);         \
    ASSERT_TRUE(status_.ok()) << status_;        \
  } while (0)

// Infinity when `out` has a non-finite value (NaN poison left unwritten).
double RelErr(const std::vector<float>& out, const std::vector<float>& ref) {
  if (out.size() != ref.size()) return INFINITY;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    diff += (double(out[i]) - ref[i]) * (double(out[i]) - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return norm == 0 ? std::sqrt(diff) : std::sqrt(diff / norm);
}

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<float> RoundBf16(std::vector<float> v) {
  for (float& x : v) x = Bf16ToF32(F32ToBf16(x));
  return v;
}

class CudaOpsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto ops = NewCudaOps();
    if (ops.ok()) {
      gpu_ = ops->release();
    } else {
      init_error_ = new std::string(ops.status().ToString());
    }
  }
  static void TearDownTestSuite() {
    delete gpu_;
    gpu_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(gpu_, nullptr) << "NewCudaOps failed: " << *init_error_;
    const unsigned seed = std::random_device{}();
    std::cout << "[ seed     ] " << seed << std::endl;
    RecordProperty("seed", static_cast<int>(seed));
    rng_.seed(seed);
    cpu_ = NewCpuOps();
  }

  // bf16-representable normal values.
  std::vector<float> Normal(size_t n, float mean = 0.0f, float stddev = 1.0f) {
    std::normal_distribution<float> dist(mean, stddev);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng_);
    return RoundBf16(std::move(v));
  }
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  static Tensor Make(Ops& ops, const std::vector<float>& values, std::vector<int64_t> shape, DType dtype) {
    auto t = ops.Empty(dtype, std::move(shape));
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return Tensor{};
    EXPECT_OK(ops.Upload(values, &*t));
    return *t;
  }
  static int64_t Numel(const std::vector<int64_t>& shape) {
    return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
  }
  Tensor Gpu(const std::vector<float>& v, std::vector<int64_t> shape, DType dtype = DType::kBF16) {
    return Make(*gpu_, v, std::move(shape), dtype);
  }
  Tensor Cpu(const std::vector<float>& v, std::vector<int64_t> shape, DType dtype = DType::kF32) {
    return Make(*cpu_, v, std::move(shape), dtype);
  }
  // GPU tensor full of NaN (I32: -7).
  Tensor Poisoned(std::vector<int64_t> shape, DType dtype = DType::kBF16) {
    const float poison = dtype == DType::kI32 ? -7.0f : NAN;
    const std::vector<float> values(Numel(shape), poison);
    return Gpu(values, std::move(shape), dtype);
  }
  Tensor CpuZeros(std::vector<int64_t> shape, DType dtype = DType::kF32) {
    const std::vector<float> values(Numel(shape), 0.0f);
    return Cpu(values, std::move(shape), dtype);
  }
  std::vector<float> Get(const Tensor& t) {
    std::vector<float> v(t.numel());
    Ops& ops = t.device == Device::kCuda ? *gpu_ : *cpu_;
    EXPECT_OK(ops.Download(t, absl::MakeSpan(v)));
    return v;
  }
  // Each of `rows` tokens routed to `top_k` distinct experts of `experts`
  // drawn at random, with weights in [0.05, 1): ids and weights [rows, top_k]
  // as floats (upload them as I32 and F32).
  std::pair<std::vector<float>, std::vector<float>> RandomRouting(int64_t rows, int64_t experts, int64_t top_k) {
    std::vector<float> ids, weights;
    std::uniform_real_distribution<float> weight(0.05f, 1.0f);
    std::vector<int32_t> order(experts);
    for (int64_t t = 0; t < rows; ++t) {
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng_);
      for (int64_t k = 0; k < top_k; ++k) {
        ids.push_back(static_cast<float>(order[k]));
        weights.push_back(weight(rng_));
      }
    }
    return {std::move(ids), std::move(weights)};
  }
  // MoeExperts of experts gate_up/dn on `rows` random tokens routed `top_k`
  // ways: the first 1, 7 and 64 rows alone give bitwise what they give in
  // the whole batch.
  void ExpectMoeExpertsBatchInvariant(const Tensor& gate_up, const Tensor& down, int64_t rows, int64_t top_k) {
    const int64_t experts = gate_up.dim(0), d = gate_up.dim(2);
    const auto [ids, weights] = RandomRouting(rows, experts, top_k);
    Tensor x = Gpu(Normal(rows * d), {rows, d});
    Tensor g_ids = Gpu(ids, {rows, top_k}, DType::kI32), g_w = Gpu(weights, {rows, top_k}, DType::kF32);
    Tensor full = Poisoned({rows, d});
    ASSERT_OK(gpu_->MoeExperts(x, g_ids, g_w, gate_up, down, 0, &full));
    const std::vector<float> all = Get(full);
    for (int64_t r : {1, 7, 64}) {
      Tensor part = Poisoned({r, d});
      ASSERT_OK(gpu_->MoeExperts(SliceRows(x, 0, r), SliceRows(g_ids, 0, r), SliceRows(g_w, 0, r), gate_up, down, 0,
                                 &part));
      EXPECT_TRUE(BitwiseEqual(Get(part), std::vector<float>(all.begin(), all.begin() + r * d)))
          << "MoeExperts (" << std::string(DTypeName(gate_up.dtype)) << "): first " << r << " rows";
    }
  }
  // The CPU's FP8 form of weight `values` and the same bytes and scales on the GPU.
  std::pair<Tensor, Tensor> Fp8Weight(const std::vector<float>& values, std::vector<int64_t> shape) {
    auto cpu_q = cpu_->QuantizeFp8(Cpu(values, shape));
    EXPECT_TRUE(cpu_q.ok()) << cpu_q.status();
    auto gpu_q = gpu_->Empty(DType::kF8E4M3, shape);
    EXPECT_TRUE(gpu_q.ok()) << gpu_q.status();
    if (!cpu_q.ok() || !gpu_q.ok()) return {};
    EXPECT_OK(gpu_->UploadBytes(cpu_q->data, cpu_q->num_bytes(), &*gpu_q));
    gpu_q->scale = std::make_shared<Tensor>(Gpu(Get(*cpu_q->scale), cpu_q->scale->shape, DType::kF32));
    return {*cpu_q, *gpu_q};
  }

  static Ops* gpu_;
  static std::string* init_error_;
  std::unique_ptr<Ops> cpu_;
  std::mt19937 rng_;
};

Ops* CudaOpsTest::gpu_ = nullptr;
std::string* CudaOpsTest::init_error_ = nullptr;

TEST_F(CudaOpsTest, BackendBasics) {
  EXPECT_EQ(gpu_->name(), "cuda");
  EXPECT_EQ(gpu_->storage_dtype(), DType::kBF16);
  auto t = gpu_->Empty(DType::kBF16, {3, 5});
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->device, Device::kCuda);
  EXPECT_EQ(gpu_->Empty(DType::kBF16, {-1}).status().code(), absl::StatusCode::kInvalidArgument);
  auto empty = gpu_->Empty(DType::kF32, {0, 7});
  ASSERT_TRUE(empty.ok());
  EXPECT_OK(gpu_->Upload({}, &*empty));
  EXPECT_OK(gpu_->Synchronize());
  // The poison the op tests rely on really is there.
  for (float v : Get(Poisoned({5, 3}))) EXPECT_TRUE(std::isnan(v));
  for (float v : Get(Poisoned({4}, DType::kF32))) EXPECT_TRUE(std::isnan(v));
  EXPECT_EQ(Get(Poisoned({2}, DType::kI32)), std::vector<float>(2, -7.0f));
}

TEST_F(CudaOpsTest, UploadDownloadRoundTripEachDType) {
  for (DType dtype : {DType::kBF16, DType::kF32, DType::kI32}) {
    for (const std::vector<int64_t>& shape : {std::vector<int64_t>{1}, {7, 3}, {513, 33}}) {
      const int64_t n = Numel(shape);
      std::vector<float> values;
      if (dtype == DType::kI32) {
        for (int64_t i = 0; i < n; ++i) values.push_back(static_cast<float>(Uniform(-100000, 100000)));
      } else if (dtype == DType::kBF16) {
        values = Normal(n);
      } else {
        std::normal_distribution<float> dist;
        for (int64_t i = 0; i < n; ++i) values.push_back(dist(rng_));
      }
      Tensor t = Gpu(values, shape, dtype);
      EXPECT_TRUE(BitwiseEqual(Get(t), values)) << DTypeName(dtype) << " " << t.ShapeString();
    }
  }
  Tensor t = Poisoned({4});
  EXPECT_EQ(gpu_->Upload(std::vector<float>(5, 1.0f), &t).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> three(3);
  EXPECT_EQ(gpu_->Download(t, absl::MakeSpan(three)).code(), absl::StatusCode::kInvalidArgument);
  Tensor host = CpuZeros({4});
  EXPECT_EQ(gpu_->Upload(std::vector<float>(4, 1.0f), &host).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaOpsTest, FillEachDType) {
  for (DType dtype : {DType::kBF16, DType::kF32, DType::kI32}) {
    Tensor t = Poisoned({513, 7}, dtype);
    ASSERT_OK(gpu_->Fill(&t, -3.0f));
    EXPECT_TRUE(BitwiseEqual(Get(t), std::vector<float>(513 * 7, -3.0f))) << DTypeName(dtype);
  }
  Tensor t = Poisoned({9});
  ASSERT_OK(gpu_->Fill(&t, 1.5f));
  EXPECT_TRUE(BitwiseEqual(Get(t), std::vector<float>(9, 1.5f)));
}

TEST_F(CudaOpsTest, FillRandomMatchesCpu) {
  const uint64_t seed = rng_();
  const int64_t n = 100003;
  Tensor ref = CpuZeros({n});
  ASSERT_OK(cpu_->FillRandom(&ref, seed, 0.5f, 2.0f));
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Tensor t = Poisoned({n}, dtype);
    ASSERT_OK(gpu_->FillRandom(&t, seed, 0.5f, 2.0f));
    const double err = RelErr(Get(t), Get(ref));
    EXPECT_LT(err, dtype == DType::kF32 ? 1e-5 : 1e-2) << DTypeName(dtype);
    std::cout << "FillRandom " << DTypeName(dtype) << " rel err " << err << std::endl;
  }
}

TEST_F(CudaOpsTest, EmbeddingMatchesCpuExactly) {
  for (int64_t d : {77, 256}) {
    const int64_t vocab = 101;
    std::vector<float> table = Normal(vocab * d);
    Tensor g_table = Gpu(table, {vocab, d}), c_table = Cpu(table, {vocab, d});
    for (int64_t rows : {1, 7, 513}) {
      std::vector<int32_t> ids(rows);
      for (int32_t& id : ids) id = Uniform(0, vocab - 1);
      Tensor out = Poisoned({rows, d}), ref = CpuZeros({rows, d});
      ASSERT_OK(gpu_->Embedding(g_table, ids, &out));
      ASSERT_OK(cpu_->Embedding(c_table, ids, &ref));
      EXPECT_TRUE(BitwiseEqual(Get(out), Get(ref))) << rows << "x" << d;
    }
    Tensor out = Poisoned({1, d});
    EXPECT_EQ(gpu_->Embedding(g_table, std::vector<int32_t>{-1}, &out).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(gpu_->Embedding(g_table, std::vector<int32_t>{static_cast<int32_t>(vocab)}, &out).code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(CudaOpsTest, RmsNormAndAddRmsNormMatchCpu) {
  for (int64_t rows : {1, 7, 513}) {
    for (int64_t d : {7, 512, 7168}) {
      std::vector<float> x = Normal(rows * d), w = Normal(d, 1.0f, 0.2f), r = Normal(rows * d);
      Tensor out = Poisoned({rows, d}), ref = CpuZeros({rows, d});
      Tensor gx = Gpu(x, {rows, d}), gw = Gpu(w, {d}), cx = Cpu(x, {rows, d}), cw = Cpu(w, {d});
      ASSERT_OK(gpu_->RmsNorm(gx, gw, 1e-6f, &out));
      ASSERT_OK(cpu_->RmsNorm(cx, cw, 1e-6f, &ref));
      EXPECT_LT(RelErr(Get(out), Get(ref)), 1e-2) << "RmsNorm " << rows << "x" << d;

      Tensor g_res = Gpu(r, {rows, d}), c_res = Cpu(r, {rows, d});
      Tensor out2 = Poisoned({rows, d});
      ASSERT_OK(gpu_->AddRmsNorm(&g_res, gx, gw, 1e-6f, &out2));
      ASSERT_OK(cpu_->AddRmsNorm(&c_res, cx, cw, 1e-6f, &ref));
      EXPECT_LT(RelErr(Get(g_res), Get(c_res)), 1e-2) << "AddRmsNorm residual " << rows << "x" << d;
      EXPECT_LT(RelErr(Get(out2), Get(ref)), 1e-2) << "AddRmsNorm out " << rows << "x" << d;
    }
  }
}

TEST_F(CudaOpsTest, LinearMatchesCpu) {
  struct Case {
    int64_t k, n;
    DType out_dtype;
  };
  for (const Case& c : {Case{256, 96, DType::kBF16}, Case{65, 33, DType::kBF16}, Case{2048, 576, DType::kBF16},
                        Case{512, 160, DType::kF32}}) {
    std::vector<float> w = Normal(c.n * c.k, 0.0f, 1.0f / std::sqrt(float(c.k)));
    Tensor gw = Gpu(w, {c.n, c.k}), cw = Cpu(w, {c.n, c.k});
    for (int64_t rows : {1, 7, 513}) {
      std::vector<float> x = Normal(rows * c.k);
      Tensor out = Poisoned({rows, c.n}, c.out_dtype), ref = CpuZeros({rows, c.n});
      ASSERT_OK(gpu_->Linear(Gpu(x, {rows, c.k}), gw, &out));
      ASSERT_OK(cpu_->Linear(Cpu(x, {rows, c.k}), cw, &ref));
      const double err = RelErr(Get(out), Get(ref));
      EXPECT_LT(err, 1e-2) << rows << "x" << c.k << " -> " << c.n;
      if (rows == 513) std::cout << "Linear 513x" << c.k << "->" << c.n << " rel err " << err << std::endl;
    }
  }
  Tensor bad = Poisoned({2, 3});
  EXPECT_EQ(gpu_->Linear(Gpu(Normal(2 * 4), {2, 4}), Gpu(Normal(5 * 4), {5, 4}), &bad).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaOpsTest, HeadLinearMatchesCpu) {
  struct Case {
    int64_t heads, n, k;
  };
  for (const Case& c : {Case{16, 512, 128}, Case{16, 128, 512}, Case{3, 5, 7}}) {
    std::vector<float> w = Normal(c.heads * c.n * c.k, 0.0f, 1.0f / std::sqrt(float(c.k)));
    Tensor gw = Gpu(w, {c.heads, c.n, c.k}), cw = Cpu(w, {c.heads, c.n, c.k});
    for (int64_t rows : {1, 7, 513}) {
      std::vector<float> x = Normal(rows * c.heads * c.k);
      Tensor out = Poisoned({rows, c.heads, c.n}), ref = CpuZeros({rows, c.heads, c.n});
      ASSERT_OK(gpu_->HeadLinear(Gpu(x, {rows, c.heads, c.k}), gw, &out));
      ASSERT_OK(cpu_->HeadLinear(Cpu(x, {rows, c.heads, c.k}), cw, &ref));
      EXPECT_LT(RelErr(Get(out), Get(ref)), 1e-2) << rows << "x" << c.heads << "x" << c.k << " -> " << c.n;
    }
  }
}

TEST_F(CudaOpsTest, RopeBothLayoutsMatchCpu) {
  const int64_t dim = 64;
  RopeTable table;
  table.rope_dim = dim;
  table.attention_factor = 1.2f;
  for (int64_t i = 0; i < dim / 2; ++i) {
    table.inv_freq.push_back(1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / dim));
  }
  for (bool interleaved : {true, false}) {
    table.interleaved = interleaved;
    for (int64_t rows : {1, 7, 513}) {
      for (int64_t heads : {1, 16}) {
        std::vector<float> x = Normal(rows * heads * dim);
        std::vector<int32_t> positions(rows);
        for (int32_t& p : positions) p = Uniform(0, 200000);
        Tensor gx = Gpu(x, {rows, heads, dim}), cx = Cpu(x, {rows, heads, dim});
        ASSERT_OK(gpu_->Rope(&gx, positions, table));
        ASSERT_OK(cpu_->Rope(&cx, positions, table));
        EXPECT_LT(RelErr(Get(gx), Get(cx)), 1e-2)
            << (interleaved ? "interleaved " : "half-split ") << rows << "x" << heads;
      }
    }
  }
  Tensor wrong = Gpu(Normal(2 * 32), {2, 1, 32});
  EXPECT_EQ(gpu_->Rope(&wrong, std::vector<int32_t>{0, 1}, table).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaOpsTest, AddMatchesCpu) {
  // 513 * 1000 takes the 8-wide path, the others the scalar one.
  for (int64_t n : {1, 7 * 33, 513 * 1000, 513 * 1001}) {
    std::vector<float> a = Normal(n), b = Normal(n);
    Tensor ga = Gpu(a, {n}), ca = Cpu(a, {n});
    ASSERT_OK(gpu_->Add(&ga, Gpu(b, {n})));
    ASSERT_OK(cpu_->Add(&ca, Cpu(b, {n})));
    EXPECT_LT(RelErr(Get(ga), Get(ca)), 1e-2) << n;
  }
  Tensor a = Poisoned({3});
  EXPECT_EQ(gpu_->Add(&a, Poisoned({4})).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaOpsTest, AddRowsWithRepeatedRowsMatchesCpu) {
  const int64_t m = 9, d = 129;
  for (int64_t n : {1, 7, 513}) {
    std::vector<float> dst = Normal(m * d), src = Normal(n * d);
    std::vector<int32_t> rows(n);
    for (int32_t& r : rows) r = Uniform(0, m - 1);
    Tensor g_dst = Gpu(dst, {m, d}), c_dst = Cpu(dst, {m, d});
    ASSERT_OK(gpu_->AddRows(Gpu(src, {n, d}), rows, &g_dst));
    ASSERT_OK(cpu_->AddRows(Cpu(src, {n, d}), rows, &c_dst));
    EXPECT_LT(RelErr(Get(g_dst), Get(c_dst)), 1e-2) << n;
  }
  Tensor g_dst = Gpu(Normal(m * d), {m, d});
  EXPECT_EQ(gpu_->AddRows(Gpu(Normal(d), {1, d}), std::vector<int32_t>{static_cast<int32_t>(m)}, &g_dst).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaOpsTest, SiluMulMatchesCpu) {
  for (int64_t rows : {1, 7, 513}) {
    for (int64_t inner : {7, 1408}) {
      std::vector<float> x = Normal(rows * 2 * inner, 0.0f, 2.0f);
      Tensor out = Poisoned({rows, inner}), ref = CpuZeros({rows, inner});
      ASSERT_OK(gpu_->SiluMul(Gpu(x, {rows, 2 * inner}), &out));
      ASSERT_OK(cpu_->SiluMul(Cpu(x, {rows, 2 * inner}), &ref));
      EXPECT_LT(RelErr(Get(out), Get(ref)), 1e-2) << rows << "x" << inner;
    }
  }
}

TEST_F(CudaOpsTest, LatentCacheWriteAndGatherMatchCpuExactly) {
  const int64_t blocks = 12, layers = 3, block_size = 16, rank = 512, rope = 64;
  const std::vector<int64_t> shape{blocks, layers, block_size, rank + rope};
  const std::vector<float> initial = Normal(Numel(shape));
  Tensor g_cache = Gpu(initial, shape), c_cache = Cpu(initial, shape);
  for (int64_t rows : {1, 7, 150}) {
    std::vector<int64_t> all(blocks * block_size);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng_);
    std::vector<int64_t> slots(all.begin(), all.begin() + rows);
    std::vector<float> c_kv = Normal(rows * rank), k_rope = Normal(rows * rope);
    const int64_t layer = rows % layers;
    ASSERT_OK(gpu_->WriteLatentCache(Gpu(c_kv, {rows, rank}), Gpu(k_rope, {rows, rope}), slots, layer, &g_cache));
    ASSERT_OK(cpu_->WriteLatentCache(Cpu(c_kv, {rows, rank}), Cpu(k_rope, {rows, rope}), slots, layer, &c_cache));
    EXPECT_TRUE(BitwiseEqual(Get(g_cache), Get(c_cache))) << "write " << rows;
  }
  std::vector<int32_t> block_table(blocks);
  std::iota(block_table.begin(), block_table.end(), 0);
  std::shuffle(block_table.begin(), block_table.end(), rng_);
  for (int64_t positions : {int64_t{1}, int64_t{7}, int64_t{100}, blocks * block_size}) {
    for (int64_t layer = 0; layer < layers; ++layer) {
      Tensor g_kv = Poisoned({positions, rank}), g_rope = Poisoned({positions, rope});
      Tensor c_kv = CpuZeros({positions, rank}), c_rope = CpuZeros({positions, rope});
      ASSERT_OK(gpu_->GatherLatent(g_cache, layer, block_table, positions, &g_kv, &g_rope));
      ASSERT_OK(cpu_->GatherLatent(c_cache, layer, block_table, positions, &c_kv, &c_rope));
      EXPECT_TRUE(BitwiseEqual(Get(g_kv), Get(c_kv))) << "gather c_kv " << positions << " layer " << layer;
      EXPECT_TRUE(BitwiseEqual(Get(g_rope), Get(c_rope))) << "gather k_rope " << positions << " layer " << layer;
    }
  }
  Tensor kv = Gpu(Normal(rank), {1, rank}), kr = Gpu(Normal(rope), {1, rope});
  EXPECT_EQ(gpu_->WriteLatentCache(kv, kr, std::vector<int64_t>{blocks * block_size}, 0, &g_cache).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(gpu_->GatherLatent(g_cache, 0, std::vector<int32_t>{static_cast<int32_t>(blocks)}, 1, &kv, &kr).code(),
            absl::StatusCode::kOutOfRange);
  Tensor kv2 = Poisoned({block_size + 1, rank}), kr2 = Poisoned({block_size + 1, rope});
  EXPECT_EQ(gpu_->GatherLatent(g_cache, 0, std::vector<int32_t>{0}, block_size + 1, &kv2, &kr2).code(),
            absl::StatusCode::kInvalidArgument);
}

// An FP8 cache written on the GPU holds the CPU's bytes (the same quantization
// rule on the same bf16 values), at DeepSeek's dims and the tiny model's; it
// gathers back as bf16(e4m3 * scale), the CPU's values rounded to bf16.
TEST_F(CudaOpsTest, Fp8LatentCacheWriteAndGatherMatchCpu) {
  for (const auto [rank, rope] : {std::pair<int64_t, int64_t>{512, 64}, {64, 16}, {160, 8}}) {
    const int64_t blocks = 6, layers = 2, block_size = 16, rows = blocks * block_size;
    const std::vector<int64_t> shape{blocks, layers, block_size, Fp8LatentRow{rank, rope}.bytes()};
    auto g_cache = gpu_->Empty(DType::kU8, shape);
    auto c_cache = cpu_->Empty(DType::kU8, shape);
    ASSERT_TRUE(g_cache.ok() && c_cache.ok());
    std::vector<int64_t> slots(rows);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng_);
    for (int64_t layer = 0; layer < layers; ++layer) {
      std::vector<float> c_kv = Normal(rows * rank), k_rope = Normal(rows * rope);
      for (int64_t i = 0; i < rows * rank; ++i) c_kv[i] = Bf16ToF32(F32ToBf16(c_kv[i] * (1 + i / rank % 7)));
      for (float& v : k_rope) v = Bf16ToF32(F32ToBf16(v));
      ASSERT_OK(gpu_->WriteLatentCache(Gpu(c_kv, {rows, rank}), Gpu(k_rope, {rows, rope}), slots, layer, &*g_cache));
      ASSERT_OK(cpu_->WriteLatentCache(Cpu(c_kv, {rows, rank}), Cpu(k_rope, {rows, rope}), slots, layer, &*c_cache));
    }
    // Every part of every row holds the CPU's bytes (the padding between parts is never written).
    std::vector<uint8_t> g_bytes(g_cache->num_bytes());
    ASSERT_EQ(cudaMemcpy(g_bytes.data(), g_cache->data, g_bytes.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    const Fp8LatentRow format{rank, rope};
    const std::pair<int64_t, int64_t> parts[] = {
        {0, rank}, {format.scales_offset(), 4 * Fp8Groups(rank)}, {format.rope_offset(), 2 * rope}};
    for (int64_t row = 0; row < blocks * layers * block_size; ++row) {
      for (const auto [at, size] : parts) {
        ASSERT_EQ(std::memcmp(g_bytes.data() + row * format.bytes() + at, c_cache->as<uint8_t>() + row * format.bytes() + at,
                              size),
                  0)
            << "rank " << rank << " row " << row << " bytes at " << at;
      }
    }
    std::vector<int32_t> table(blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), rng_);
    Tensor g_kv = Poisoned({rows, rank}), g_rope = Poisoned({rows, rope});
    Tensor c_kv = CpuZeros({rows, rank}), c_rope = CpuZeros({rows, rope});
    ASSERT_OK(gpu_->GatherLatent(*g_cache, 1, table, rows, &g_kv, &g_rope));
    ASSERT_OK(cpu_->GatherLatent(*c_cache, 1, table, rows, &c_kv, &c_rope));
    std::vector<float> expected = Get(c_kv);
    for (float& v : expected) v = Bf16ToF32(F32ToBf16(v));
    EXPECT_TRUE(BitwiseEqual(Get(g_kv), expected)) << "rank " << rank;
    EXPECT_TRUE(BitwiseEqual(Get(g_rope), Get(c_rope))) << "rank " << rank;
  }
  auto odd = gpu_->Empty(DType::kU8, {2, 1, 4, Fp8LatentRow{40, 8}.bytes()});
  ASSERT_TRUE(odd.ok());
  EXPECT_EQ(gpu_->WriteLatentCache(Gpu(Normal(40), {1, 40}), Gpu(Normal(8), {1, 8}), std::vector<int64_t>{0}, 0, &*odd)
                .code(),
            absl::StatusCode::kUnimplemented);
}

TEST_F(CudaOpsTest, MoeRouteMatchesCpuForBothRouterKinds) {
  struct Case {
    const char* name;
    int64_t experts;
    bool with_bias;
    RouterConfig config;
  };
  const std::vector<Case> cases = {
      {"V3 sigmoid noaux_tc", 256, true,
       {.sigmoid = true, .noaux_tc = true, .num_groups = 8, .topk_groups = 4, .top_k = 8, .normalize = true,
        .scaling = 2.5f}},
      {"tiny V3", 16, true,
       {.sigmoid = true, .noaux_tc = true, .num_groups = 4, .topk_groups = 2, .top_k = 4, .normalize = true,
        .scaling = 2.5f}},
      {"V2 softmax group_limited", 160, false,
       {.group_limited = true, .num_groups = 8, .topk_groups = 3, .top_k = 6, .scaling = 16.0f}},
      {"V2-Lite softmax greedy", 64, false, {.top_k = 6, .scaling = 1.0f}},
      {"softmax normalized", 7, false, {.top_k = 2, .normalize = true}},
  };
  for (const Case& c : cases) {
    const std::vector<float> bias = Normal(c.experts, 0.0f, 0.1f);
    for (int64_t rows : {1, 7, 513}) {
      const std::vector<float> logits = Normal(rows * c.experts, 0.0f, 2.0f);
      const int64_t k = c.config.top_k;
      Tensor g_bias = Gpu(bias, {c.experts}), c_bias = Cpu(bias, {c.experts});
      Tensor g_ids = Poisoned({rows, k}, DType::kI32), g_w = Poisoned({rows, k}, DType::kF32);
      Tensor c_ids = CpuZeros({rows, k}, DType::kI32), c_w = CpuZeros({rows, k});
      ASSERT_OK(gpu_->MoeRoute(Gpu(logits, {rows, c.experts}), c.with_bias ? &g_bias : nullptr, c.config, &g_ids,
                               &g_w));
      ASSERT_OK(cpu_->MoeRoute(Cpu(logits, {rows, c.experts}), c.with_bias ? &c_bias : nullptr, c.config, &c_ids,
                               &c_w));
      const std::vector<float> gi = Get(g_ids), ci = Get(c_ids);
      int64_t differing_rows = 0;
      for (int64_t t = 0; t < rows; ++t) {
        if (!std::equal(gi.begin() + t * k, gi.begin() + (t + 1) * k, ci.begin() + t * k)) ++differing_rows;
      }
      EXPECT_EQ(differing_rows, 0) << c.name << " rows " << rows;
      EXPECT_LT(RelErr(Get(g_w), Get(c_w)), 1e-5) << c.name << " rows " << rows;
    }
  }
  // The same logits as float32 on the GPU route the same way.
  const std::vector<float> logits = Normal(7 * 64);
  Tensor g_ids = Poisoned({7, 6}, DType::kI32), g_w = Poisoned({7, 6}, DType::kF32);
  Tensor c_ids = CpuZeros({7, 6}, DType::kI32), c_w = CpuZeros({7, 6});
  const RouterConfig config{.top_k = 6};
  ASSERT_OK(gpu_->MoeRoute(Gpu(logits, {7, 64}, DType::kF32), nullptr, config, &g_ids, &g_w));
  ASSERT_OK(cpu_->MoeRoute(Cpu(logits, {7, 64}), nullptr, config, &c_ids, &c_w));
  EXPECT_EQ(Get(g_ids), Get(c_ids));
  EXPECT_EQ(gpu_->MoeRoute(Gpu(logits, {7, 64}), nullptr, RouterConfig{.top_k = 65}, &g_ids, &g_w).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaOpsTest, MoeExpertsWithExpertRangeMatchCpu) {
  struct Case {
    int64_t total_experts, first_expert, local_experts, d, inner, top_k;
  };
  for (const Case& c : {Case{16, 4, 8, 256, 64, 4}, Case{16, 0, 16, 1024, 352, 6}}) {
    std::vector<float> gate_up = Normal(c.local_experts * 2 * c.inner * c.d, 0.0f, 1.0f / std::sqrt(float(c.d)));
    std::vector<float> down = Normal(c.local_experts * c.d * c.inner, 0.0f, 1.0f / std::sqrt(float(c.inner)));
    const std::vector<int64_t> gu_shape{c.local_experts, 2 * c.inner, c.d}, down_shape{c.local_experts, c.d, c.inner};
    Tensor g_gu = Gpu(gate_up, gu_shape), g_down = Gpu(down, down_shape);
    Tensor c_gu = Cpu(gate_up, gu_shape), c_down = Cpu(down, down_shape);
    for (int64_t rows : {1, 7, 513}) {
      auto [ids, weights] = RandomRouting(rows, c.total_experts, c.top_k);
      // Row 1 routes only outside this shard's range (when there is an outside).
      if (rows > 1 && c.first_expert > 0) std::iota(ids.begin() + c.top_k, ids.begin() + 2 * c.top_k, 0.0f);
      const std::vector<float> x = Normal(rows * c.d);
      Tensor out = Poisoned({rows, c.d}), ref = CpuZeros({rows, c.d});
      ASSERT_OK(gpu_->MoeExperts(Gpu(x, {rows, c.d}), Gpu(ids, {rows, c.top_k}, DType::kI32),
                                 Gpu(weights, {rows, c.top_k}, DType::kF32), g_gu, g_down, c.first_expert, &out));
      ASSERT_OK(cpu_->MoeExperts(Cpu(x, {rows, c.d}), Cpu(ids, {rows, c.top_k}, DType::kI32),
                                 Cpu(weights, {rows, c.top_k}), c_gu, c_down, c.first_expert, &ref));
      const std::vector<float> got = Get(out), want = Get(ref);
      const double err = RelErr(got, want);
      EXPECT_LT(err, 1e-2) << "experts [" << c.first_expert << ", " << c.first_expert + c.local_experts << ") rows "
                           << rows;
      if (rows == 513) std::cout << "MoeExperts d=" << c.d << " inner=" << c.inner << " rel err " << err << std::endl;
      if (rows > 1 && c.first_expert > 0) {
        // Row 1's experts 0..top_k-1 all lie below first_expert: a zero row, written.
        EXPECT_TRUE(BitwiseEqual(std::vector<float>(got.begin() + c.d, got.begin() + 2 * c.d),
                                 std::vector<float>(c.d, 0.0f)));
      }
    }
  }
}

// A row's result must not depend on the other rows of its batch.
TEST_F(CudaOpsTest, BatchInvariance) {
  const int64_t rows = 513, k = 2048, n = 576;
  Tensor x = Gpu(Normal(rows * k), {rows, k}), w = Gpu(Normal(n * k, 0.0f, 0.02f), {n, k});
  Tensor full = Poisoned({rows, n});
  ASSERT_OK(gpu_->Linear(x, w, &full));
  const std::vector<float> all = Get(full);
  for (int64_t r : {1, 7, 64, 200}) {
    Tensor part = Poisoned({r, n});
    ASSERT_OK(gpu_->Linear(SliceRows(x, 0, r), w, &part));
    EXPECT_TRUE(BitwiseEqual(Get(part), std::vector<float>(all.begin(), all.begin() + r * n)))
        << "Linear: first " << r << " rows alone differ from the same rows in a batch of " << rows;
  }

  const int64_t heads = 16, hk = 128, hn = 512;
  Tensor hx = Gpu(Normal(rows * heads * hk), {rows, heads, hk}), hw = Gpu(Normal(heads * hn * hk), {heads, hn, hk});
  Tensor hfull = Poisoned({rows, heads, hn});
  ASSERT_OK(gpu_->HeadLinear(hx, hw, &hfull));
  const std::vector<float> hall = Get(hfull);
  for (int64_t r : {1, 7, 64}) {
    Tensor part = Poisoned({r, heads, hn});
    ASSERT_OK(gpu_->HeadLinear(SliceRows(hx, 0, r), hw, &part));
    EXPECT_TRUE(BitwiseEqual(Get(part), std::vector<float>(hall.begin(), hall.begin() + r * heads * hn)))
        << "HeadLinear: first " << r << " rows";
  }

  const int64_t experts = 16, d = 1024, inner = 352, top_k = 6;
  Tensor gu = Gpu(Normal(experts * 2 * inner * d, 0.0f, 0.03f), {experts, 2 * inner, d});
  Tensor dn = Gpu(Normal(experts * d * inner, 0.0f, 0.05f), {experts, d, inner});
  ExpectMoeExpertsBatchInvariant(gu, dn, rows, top_k);
}

// FP8 (kernels/ops.h, Linear): the weights quantized once on the CPU and the
// same bytes uploaded to the GPU; the activations are bf16 values, which both
// backends quantize to the same bytes, so outputs differ only by accumulation
// order and bf16 rounding.
TEST_F(CudaOpsTest, QuantizeFp8MatchesCpuBitwise) {
  for (int64_t k : {16, 144, 2048}) {
    std::vector<float> w = Normal(37 * k, 0.0f, 0.05f);
    for (int64_t i = 0; i < k; ++i) w[i] = 0.0f;  // an all-zero row
    auto gq = gpu_->QuantizeFp8(Gpu(w, {37, k}));
    auto cq = cpu_->QuantizeFp8(Cpu(w, {37, k}));
    ASSERT_TRUE(gq.ok() && cq.ok());
    EXPECT_TRUE(BitwiseEqual(Get(*gq), Get(*cq))) << "values, k " << k;
    EXPECT_TRUE(BitwiseEqual(Get(*gq->scale), Get(*cq->scale))) << "scales, k " << k;
  }
}

TEST_F(CudaOpsTest, Fp8LinearMatchesCpu) {
  struct Case {
    int64_t k, n;
  };
  // 2048 -> 576 and 7168 -> 64 split k; 144 has a partial group.
  for (const Case& c : {Case{256, 96}, Case{144, 40}, Case{2048, 576}, Case{7168, 64}}) {
    const std::vector<float> w = Normal(c.n * c.k, 0.0f, 1.0f / std::sqrt(float(c.k)));
    auto [cw, gw] = Fp8Weight(w, {c.n, c.k});
    for (int64_t rows : {1, 7, 513, 1100}) {
      const std::vector<float> x = Normal(rows * c.k);
      Tensor out = Poisoned({rows, c.n});
      auto ref = cpu_->Empty(DType::kF32, {rows, c.n});
      auto exact = cpu_->Empty(DType::kF32, {rows, c.n});
      ASSERT_OK(gpu_->Linear(Gpu(x, {rows, c.k}), gw, &out));
      ASSERT_OK(cpu_->Linear(Cpu(x, {rows, c.k}), cw, &*ref));
      ASSERT_OK(cpu_->Linear(Cpu(x, {rows, c.k}), Cpu(w, {c.n, c.k}), &*exact));
      const double err = RelErr(Get(out), Get(*ref)), quantization = RelErr(Get(*ref), Get(*exact));
      EXPECT_LT(err, 1e-2) << rows << "x" << c.k << " -> " << c.n;
      // FP8's own error against the unquantized product: a few percent, not more.
      EXPECT_LT(quantization, 0.1) << rows << "x" << c.k << " -> " << c.n;
      if (rows == 513) {
        std::cout << "FP8 Linear 513x" << c.k << "->" << c.n << ": rel err " << err << " against the CPU rule, "
                  << quantization << " for the rule against unquantized" << std::endl;
      }
    }
  }
}

TEST_F(CudaOpsTest, Fp8MoeExpertsMatchCpu) {
  struct Case {
    int64_t total_experts, first_expert, local_experts, d, inner, top_k;
  };
  for (const Case& c : {Case{16, 4, 8, 256, 64, 4}, Case{16, 0, 16, 1024, 352, 6}}) {
    auto [c_gu, g_gu] = Fp8Weight(Normal(c.local_experts * 2 * c.inner * c.d, 0.0f, 1.0f / std::sqrt(float(c.d))),
                                  {c.local_experts, 2 * c.inner, c.d});
    auto [c_dn, g_dn] = Fp8Weight(Normal(c.local_experts * c.d * c.inner, 0.0f, 1.0f / std::sqrt(float(c.inner))),
                                  {c.local_experts, c.d, c.inner});
    for (int64_t rows : {1, 7, 513}) {
      const auto [ids, weights] = RandomRouting(rows, c.total_experts, c.top_k);
      const std::vector<float> x = Normal(rows * c.d);
      Tensor out = Poisoned({rows, c.d});
      auto ref = cpu_->Empty(DType::kF32, {rows, c.d});
      ASSERT_OK(gpu_->MoeExperts(Gpu(x, {rows, c.d}), Gpu(ids, {rows, c.top_k}, DType::kI32),
                                 Gpu(weights, {rows, c.top_k}, DType::kF32), g_gu, g_dn, c.first_expert, &out));
      ASSERT_OK(cpu_->MoeExperts(Cpu(x, {rows, c.d}), Cpu(ids, {rows, c.top_k}, DType::kI32),
                                 Cpu(weights, {rows, c.top_k}), c_gu, c_dn, c.first_expert, &*ref));
      // The GPU rounds the gated activations to bf16 before quantizing them: a
      // few of them land in the neighbouring e4m3 value (seen up to 3e-2 over 7 rows).
      const double err = RelErr(Get(out), Get(*ref));
      EXPECT_LT(err, 5e-2) << "d " << c.d << " rows " << rows;
      if (rows == 513) std::cout << "FP8 MoeExperts d=" << c.d << " inner=" << c.inner << " rel err " << err << std::endl;
    }
  }
}

// A row's result must not depend on the other rows of its batch, across tile
// shapes, the split of k, and the row chunks of a split GEMM.
TEST_F(CudaOpsTest, Fp8BatchInvariance) {
  const int64_t rows = 1100, k = 2048, n = 576;
  auto [cw, w] = Fp8Weight(Normal(n * k, 0.0f, 0.02f), {n, k});
  Tensor x = Gpu(Normal(rows * k), {rows, k});
  Tensor full = Poisoned({rows, n});
  ASSERT_OK(gpu_->Linear(x, w, &full));
  const std::vector<float> all = Get(full);
  for (int64_t begin : {0, 1030}) {
    for (int64_t r : {1, 7, 64}) {
      Tensor part = Poisoned({r, n});
      ASSERT_OK(gpu_->Linear(SliceRows(x, begin, r), w, &part));
      EXPECT_TRUE(BitwiseEqual(Get(part), std::vector<float>(all.begin() + begin * n, all.begin() + (begin + r) * n)))
          << "Linear: rows [" << begin << ", " << begin + r << ") alone differ from the same rows in a batch";
    }
  }

  const int64_t experts = 16, d = 1024, inner = 352, top_k = 6, moe_rows = 513;
  auto [c_gu, gu] = Fp8Weight(Normal(experts * 2 * inner * d, 0.0f, 0.03f), {experts, 2 * inner, d});
  auto [c_dn, dn] = Fp8Weight(Normal(experts * d * inner, 0.0f, 0.05f), {experts, d, inner});
  ExpectMoeExpertsBatchInvariant(gu, dn, moe_rows, top_k);
}

TEST_F(CudaOpsTest, Fp8MalformedWeightsAreInvalidArgument) {
  auto [cw, w] = Fp8Weight(Normal(32 * 64, 0.0f, 0.1f), {32, 64});
  Tensor x = Gpu(Normal(2 * 64), {2, 64});
  Tensor out = Poisoned({2, 32});
  Tensor no_scales = w;
  no_scales.scale = nullptr;
  EXPECT_EQ(gpu_->Linear(x, no_scales, &out).code(), absl::StatusCode::kInvalidArgument);
  Tensor wrong_scales = w;
  wrong_scales.scale = std::make_shared<Tensor>(Gpu(std::vector<float>(32 * 2, 1.0f), {32, 2}, DType::kF32));
  EXPECT_EQ(gpu_->Linear(x, wrong_scales, &out).code(), absl::StatusCode::kInvalidArgument);
  Tensor cpu_no_scales = cw;
  cpu_no_scales.scale = nullptr;
  Tensor cpu_out = Cpu(std::vector<float>(2 * 32), {2, 32});
  EXPECT_EQ(cpu_->Linear(Cpu(Normal(2 * 64), {2, 64}), cpu_no_scales, &cpu_out).code(),
            absl::StatusCode::kInvalidArgument);
}

// Not a check: times a few decode- and prefill-shaped GEMM ops for the record
// (mean of 20 after 3 warm-up calls, host clock around Synchronize()).
TEST_F(CudaOpsTest, TimingsForTheRecord) {
  auto time_us = [&](const std::function<absl::Status()>& op) {
    for (int i = 0; i < 3; ++i) EXPECT_OK(op());
    EXPECT_OK(gpu_->Synchronize());
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 20; ++i) EXPECT_OK(op());
    EXPECT_OK(gpu_->Synchronize());
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / 20;
  };
  // Random values made on the GPU (zeros can run faster than real data).
  auto random = [&](std::vector<int64_t> shape, float stddev) {
    auto t = gpu_->Empty(DType::kBF16, std::move(shape));
    EXPECT_TRUE(t.ok());
    EXPECT_OK(gpu_->FillRandom(&*t, rng_(), 0.0f, stddev));
    return *t;
  };
  for (auto [n, k] : {std::pair<int64_t, int64_t>{576, 7168}, {1536, 7168}, {7168, 2048}}) {
    Tensor w = random({n, k}, 0.02f);
    for (int64_t rows : {1, 64, 512}) {
      Tensor x = random({rows, k}, 1.0f);
      Tensor out = Poisoned({rows, n});
      const double us = time_us([&] { return gpu_->Linear(x, w, &out); });
      std::cout << "Linear " << rows << "x" << k << " -> " << n << ": " << us << " us, weights at "
                << n * k * 2 / us / 1e3 << " GB/s, " << 2.0 * rows * n * k / us / 1e6 << " TFLOP/s" << std::endl;
    }
  }
  // DeepSeek-V2-Lite-shaped routed experts: 64 experts, hidden 2048, inner 1408, top 6.
  const int64_t experts = 64, d = 2048, inner = 1408, top_k = 6;
  Tensor gu = random({experts, 2 * inner, d}, 0.02f), dn = random({experts, d, inner}, 0.02f);
  for (int64_t rows : {1, 16, 64, 512, 4096}) {
    const auto [ids, weights] = RandomRouting(rows, experts, top_k);
    Tensor x = random({rows, d}, 1.0f), out = Poisoned({rows, d});
    Tensor g_ids = Gpu(ids, {rows, top_k}, DType::kI32), g_w = Gpu(weights, {rows, top_k}, DType::kF32);
    const double us = time_us([&] { return gpu_->MoeExperts(x, g_ids, g_w, gu, dn, 0, &out); });
    std::vector<bool> touched(experts);
    for (float id : ids) touched[static_cast<int64_t>(id)] = true;
    const double weight_bytes = std::count(touched.begin(), touched.end(), true) * 3.0 * d * inner * 2;
    std::cout << "MoeExperts " << rows << " tokens x top " << top_k << " of " << experts << " (2048/1408): " << us
              << " us, expert weights at " << weight_bytes / us / 1e3 << " GB/s, "
              << 2.0 * rows * top_k * 3 * d * inner / us / 1e6 << " TFLOP/s" << std::endl;
  }
}

// ---- The whole model ----

constexpr char kTinyModel[] = "tests/testdata/tiny-deepseek-v3";

std::vector<int32_t> ReadIds(const SafetensorsFile& f, const std::string& name) {
  const TensorView* t = f.Find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  std::vector<float> v(t->num_elements());
  ConvertToF32(t->dtype, t->data, v.size(), v.data());
  return std::vector<int32_t>(v.begin(), v.end());
}

// Per-row relative errors of logits [rows, vocab].
std::vector<double> RowErrors(const std::vector<float>& out, const std::vector<float>& ref, int64_t vocab) {
  std::vector<double> errors;
  for (size_t begin = 0; begin + vocab <= ref.size(); begin += vocab) {
    errors.push_back(RelErr(std::vector<float>(out.begin() + begin, out.begin() + begin + vocab),
                            std::vector<float>(ref.begin() + begin, ref.begin() + begin + vocab)));
  }
  return errors;
}

// The tiny model over an FP8 cache on the GPU against the CPU's over one. As
// with FP8 weights (below), e4m3 rounding turns the last bits in which bf16
// activations differ from float32 into whole steps now and then, so the GPU
// must be no further from the float32 CPU than the bf16-storage CPU, over the
// same kind of cache, is (with a margin), in both forms and block sizes
// 64/16/1. Prints how far each is from the float cache's logits: the accuracy
// an FP8 cache costs.
TEST(CudaModelTest, TinyDeepSeekV3OverFp8CacheMatchesCpu) {
  auto gpu = NewCudaOps();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  std::unique_ptr<Ops> cpu = NewCpuOps(), emulated = NewBf16StorageCpuOps();
  auto reference = SafetensorsFile::Open(absl::StrCat(kTinyModel, "/reference.safetensors"));
  ASSERT_TRUE(reference.ok());
  struct Setup {
    int64_t block_size, chunk;
    AttentionForm form;
  };
  for (const Setup& s : {Setup{64, 0, AttentionForm::kAbsorbed}, Setup{16, 7, AttentionForm::kExpanded},
                         Setup{1, 9, AttentionForm::kCheapest}}) {
    std::vector<std::unique_ptr<Model>> models;
    std::vector<std::unique_ptr<KvCache>> caches;
    std::vector<std::unique_ptr<ModelRunner>> runners;  // GPU, bf16-storage CPU, float32 CPU; FP8 caches; float32 CPU
    const RunnerOptions options{.prefill_chunk_tokens = s.chunk, .attention_form = s.form};
    for (auto [ops, dtype] : {std::pair{&**gpu, KvCacheDtype::kFp8}, {emulated.get(), KvCacheDtype::kFp8},
                              {cpu.get(), KvCacheDtype::kFp8}, {cpu.get(), KvCacheDtype::kStorage}}) {
      auto model = Model::Load(kTinyModel, *ops);
      ASSERT_TRUE(model.ok()) << model.status();
      auto cache = KvCache::Create(*ops, (*model)->config(), 4096 / s.block_size, s.block_size, dtype);
      ASSERT_TRUE(cache.ok()) << cache.status();
      models.push_back(*std::move(model));
      caches.push_back(std::make_unique<KvCache>(*std::move(cache)));
      runners.push_back(std::make_unique<ModelRunner>(*models.back(), *caches.back(), options));
    }
    for (int i = 0; i < 3; ++i) {
      const std::vector<int32_t> ids = ReadIds(**reference, absl::StrCat("prompt", i, ".ids"));
      std::vector<std::vector<float>> logits;
      for (auto& runner : runners) {
        auto l = runner->Score(ids);
        ASSERT_TRUE(l.ok()) << l.status();
        logits.push_back(*std::move(l));
      }
      const double gpu_err = RelErr(logits[0], logits[2]), emulated_err = RelErr(logits[1], logits[2]);
      EXPECT_LE(gpu_err, 1.5 * emulated_err + 0.02) << "block " << s.block_size << " prompt " << i;
      std::cout << "block " << s.block_size << " chunk " << s.chunk << " prompt " << i << " (" << ids.size()
                << " tokens), from the float32 CPU over an FP8 cache: GPU " << gpu_err << ", bf16-storage CPU "
                << emulated_err << "; from the float32 CPU over a float cache: GPU " << RelErr(logits[0], logits[3])
                << ", float32 CPU over an FP8 cache " << RelErr(logits[2], logits[3]) << std::endl;
    }
  }
}

// The tiny DeepSeek-V3 (MLA, sigmoid noaux_tc router, shared expert) on the
// GPU against the float32 CPU reference and against bf16 storage emulated on
// the CPU. Against float32, bf16 activations leave most rows near 1e-2 and a
// few (routing near-ties: 2 of 37, 5 of 150 rows in the emulation) far off,
// so the whole-prompt error reaches ~6e-2: checked per row (median under
// 2e-2, at most a tenth of the rows over 5e-2, all under 1e-1 in aggregate).
// Greedy tokens must equal the bf16-storage reference's exactly.
TEST(CudaModelTest, TinyDeepSeekV3MatchesCpu) {
  auto gpu = NewCudaOps();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  std::unique_ptr<Ops> cpu = NewCpuOps();
  std::unique_ptr<Ops> emulated_ops = NewBf16StorageCpuOps();
  Ops& emulated = *emulated_ops;
  auto gpu_model = Model::Load(kTinyModel, **gpu);
  ASSERT_TRUE(gpu_model.ok()) << gpu_model.status();
  auto cpu_model = Model::Load(kTinyModel, *cpu);
  ASSERT_TRUE(cpu_model.ok()) << cpu_model.status();
  auto emulated_model = Model::Load(kTinyModel, emulated);
  ASSERT_TRUE(emulated_model.ok()) << emulated_model.status();
  auto reference = SafetensorsFile::Open(absl::StrCat(kTinyModel, "/reference.safetensors"));
  ASSERT_TRUE(reference.ok()) << reference.status();
  const int64_t vocab = (*gpu_model)->config().vocab_size;

  struct Setup {
    int64_t block_size, chunk;
    AttentionForm form;
  };
  for (const Setup& s : {Setup{64, 0, AttentionForm::kAbsorbed}, Setup{16, 7, AttentionForm::kAbsorbed},
                         Setup{16, 0, AttentionForm::kExpanded}, Setup{1, 9, AttentionForm::kExpanded},
                         Setup{16, 7, AttentionForm::kCheapest}}) {
    const int64_t blocks = 4096 / s.block_size;  // room for the longest prompt and its continuation
    auto gpu_cache = KvCache::Create(**gpu, (*gpu_model)->config(), blocks, s.block_size);
    auto cpu_cache = KvCache::Create(*cpu, (*cpu_model)->config(), blocks, s.block_size);
    auto emulated_cache = KvCache::Create(emulated, (*emulated_model)->config(), blocks, s.block_size);
    ASSERT_TRUE(gpu_cache.ok() && cpu_cache.ok() && emulated_cache.ok());
    const RunnerOptions options{.prefill_chunk_tokens = s.chunk, .attention_form = s.form};
    ModelRunner gpu_runner(**gpu_model, *gpu_cache, options), cpu_runner(**cpu_model, *cpu_cache, options);
    ModelRunner emulated_runner(**emulated_model, *emulated_cache, options);
    const std::string setup = absl::StrCat("block_size ", s.block_size, " chunk ", s.chunk,
                                           s.form == AttentionForm::kAbsorbed   ? " absorbed"
                                           : s.form == AttentionForm::kExpanded ? " expanded"
                                                                                : " cheapest");
    for (int i = 0; i < 3; ++i) {
      const std::vector<int32_t> ids = ReadIds(**reference, absl::StrCat("prompt", i, ".ids"));
      auto gpu_logits = gpu_runner.Score(ids);
      ASSERT_TRUE(gpu_logits.ok()) << gpu_logits.status();
      auto cpu_logits = cpu_runner.Score(ids);
      ASSERT_TRUE(cpu_logits.ok()) << cpu_logits.status();
      auto emulated_logits = emulated_runner.Score(ids);
      ASSERT_TRUE(emulated_logits.ok()) << emulated_logits.status();
      const double err = RelErr(*gpu_logits, *cpu_logits);
      std::vector<double> rows = RowErrors(*gpu_logits, *cpu_logits, vocab);
      const int64_t far_rows = std::count_if(rows.begin(), rows.end(), [](double e) { return e > 5e-2; });
      std::nth_element(rows.begin(), rows.begin() + rows.size() / 2, rows.end());
      const double median = rows[rows.size() / 2];
      EXPECT_LT(err, 1e-1) << setup << " prompt " << i;
      EXPECT_LT(median, 2e-2) << setup << " prompt " << i;
      EXPECT_LE(far_rows * 10, static_cast<int64_t>(ids.size())) << setup << " prompt " << i;

      auto gpu_greedy = gpu_runner.GenerateGreedy(ids, 8);
      ASSERT_TRUE(gpu_greedy.ok()) << gpu_greedy.status();
      auto cpu_greedy = cpu_runner.GenerateGreedy(ids, 8);
      ASSERT_TRUE(cpu_greedy.ok()) << cpu_greedy.status();
      auto emulated_greedy = emulated_runner.GenerateGreedy(ids, 8);
      ASSERT_TRUE(emulated_greedy.ok()) << emulated_greedy.status();
      EXPECT_EQ(*gpu_greedy, *emulated_greedy) << setup << " prompt " << i;
      std::vector<int32_t> hf = ReadIds(**reference, absl::StrCat("prompt", i, ".greedy"));
      hf.resize(std::min<size_t>(hf.size(), gpu_greedy->size()));
      std::cout << setup << " prompt " << i << " (" << ids.size() << " tokens): logits rel err " << err
                << " vs float32 CPU (median row " << median << ", rows over 5e-2: " << far_rows << "), "
                << RelErr(*gpu_logits, *emulated_logits) << " vs bf16-storage CPU; greedy "
                << (*gpu_greedy == *emulated_greedy ? "same as" : "DIFFERS from") << " bf16-storage CPU, "
                << (*gpu_greedy == *cpu_greedy ? "same as" : "differs from") << " float32 CPU, "
                << (std::equal(hf.begin(), hf.end(), gpu_greedy->begin()) ? "same as" : "differs from")
                << " transformers" << std::endl;
    }
  }
}


// The FP8 inference of DeepSeek-V3 (FP8 weights kept, activations quantized
// per token and 128 columns) on the GPU against the CPU's, on the tiny fixture
// quantized as DeepSeek quantizes and on its shapes with random weights.
// Quantizing activations to e4m3 (3 mantissa bits: neighbours 6-12% apart)
// turns any difference in an activation's last bits into a whole e4m3 step
// now and then, and layers compound it: the CPU alone, once with float32 and
// once with bf16 activations, gives logits 8-21% apart per row (median) on
// the fixture. So the reference is the float32 CPU, and the GPU must be no
// further from it than the bf16-storage CPU, which runs the same rule with
// the same activations' precision, is (with a margin for other bf16
// roundings; a wrong scale or tile would be several times further), and
// agree with it on greedy continuations as often.
TEST(CudaModelTest, TinyDeepSeekV3Fp8MatchesCpu) {
  auto gpu = NewCudaOps();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  std::unique_ptr<Ops> exact_ops = NewCpuOps(), emulated_ops = NewBf16StorageCpuOps();
  const std::string root = absl::StrCat(std::getenv("TEST_TMPDIR") ? std::getenv("TEST_TMPDIR") : "/tmp", "/fp8_gpu");
  ASSERT_TRUE(QuantizeCheckpointFp8(kTinyModel, root + "/fixture").ok());
  std::filesystem::create_directories(root + "/shapes");
  std::filesystem::copy_file(absl::StrCat(kTinyModel, "/config.json"), root + "/shapes/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto config = LoadModelConfig(root + "/shapes/config.json");
  ASSERT_TRUE(config.ok());
  ASSERT_TRUE(WriteRandomCheckpoint(*config, root + "/shapes", std::random_device{}(), DType::kF32).ok());
  ASSERT_TRUE(QuantizeCheckpointFp8(root + "/shapes", root + "/shapes_fp8").ok());
  auto reference = SafetensorsFile::Open(absl::StrCat(kTinyModel, "/reference.safetensors"));
  ASSERT_TRUE(reference.ok());
  struct Run {
    std::unique_ptr<Model> model;
    std::unique_ptr<KvCache> cache;
    std::unique_ptr<ModelRunner> runner;
  };
  int gpu_greedy_same = 0, emulated_greedy_same = 0;
  for (const std::string& dir : {root + "/fixture", root + "/shapes_fp8"}) {
    std::vector<Run> runs;  // GPU, bf16-storage CPU, float32 CPU
    for (Ops* ops : {&**gpu, emulated_ops.get(), exact_ops.get()}) {
      auto model = Model::Load(dir, *ops);
      ASSERT_TRUE(model.ok()) << model.status();
      auto cache = KvCache::Create(*ops, (*model)->config(), 64, 16);
      ASSERT_TRUE(cache.ok()) << cache.status();
      Run run{.model = std::move(*model), .cache = std::make_unique<KvCache>(std::move(*cache))};
      run.runner = std::make_unique<ModelRunner>(*run.model, *run.cache, RunnerOptions{.prefill_chunk_tokens = 7});
      runs.push_back(std::move(run));
    }
    const int64_t vocab = runs[0].model->config().vocab_size;
    std::vector<float> all[3];  // every prompt's logits, per run
    for (int i = 0; i < 3; ++i) {
      const std::vector<int32_t> ids = ReadIds(**reference, absl::StrCat("prompt", i, ".ids"));
      std::vector<std::vector<float>> logits;
      std::vector<std::vector<int32_t>> greedy;
      for (Run& run : runs) {
        auto l = run.runner->Score(ids);
        ASSERT_TRUE(l.ok()) << l.status();
        all[logits.size()].insert(all[logits.size()].end(), l->begin(), l->end());
        logits.push_back(*std::move(l));
        auto g = run.runner->GenerateGreedy(ids, 8);
        ASSERT_TRUE(g.ok()) << g.status();
        greedy.push_back(*std::move(g));
      }
      auto median_row = [&](const std::vector<float>& out) {
        std::vector<double> rows = RowErrors(out, logits[2], vocab);
        std::nth_element(rows.begin(), rows.begin() + rows.size() / 2, rows.end());
        return rows[rows.size() / 2];
      };
      const double gpu_err = RelErr(logits[0], logits[2]), emulated_err = RelErr(logits[1], logits[2]);
      const double gpu_median = median_row(logits[0]), emulated_median = median_row(logits[1]);
      EXPECT_LE(gpu_median, 1.5 * emulated_median + 0.02) << dir << " prompt " << i;
      gpu_greedy_same += greedy[0] == greedy[2];
      emulated_greedy_same += greedy[1] == greedy[2];
      std::cout << dir << " prompt " << i << " (" << ids.size() << " tokens), from the float32 CPU's FP8 logits: GPU "
                << gpu_err << " (median row " << gpu_median << "), bf16-storage CPU " << emulated_err << " (median row "
                << emulated_median << "); greedy " << (greedy[0] == greedy[2] ? "same" : "differs") << " on the GPU, "
                << (greedy[1] == greedy[2] ? "same" : "differs") << " on the bf16-storage CPU" << std::endl;
    }
    // The few rows whose routing flips dominate a short prompt's whole error: checked over all three.
    EXPECT_LE(RelErr(all[0], all[2]), 1.5 * RelErr(all[1], all[2]) + 0.02) << dir;
  }
  EXPECT_GE(gpu_greedy_same + 1, emulated_greedy_same) << gpu_greedy_same << " vs " << emulated_greedy_same << " of 6";
}

// Decode steps recorded as CUDA graphs and replayed (CudaOpsOptions::step_graphs)
// against the same steps run op by op: logits bit for bit, through a batch
// that shrinks and a sequence that crosses a 512-key split (each makes a new
// recording), after a prefill (never recorded).
TEST(CudaModelTest, RecordedDecodeStepsEqualEagerOnes) {
  auto recorded_ops = NewCudaOps(0, {.step_graphs = true});
  auto eager_ops = NewCudaOps(0, {.step_graphs = false});
  ASSERT_TRUE(recorded_ops.ok() && eager_ops.ok()) << recorded_ops.status() << eager_ops.status();
  auto recorded = Model::Load(kTinyModel, **recorded_ops);
  auto eager = Model::Load(kTinyModel, **eager_ops);
  ASSERT_TRUE(recorded.ok() && eager.ok()) << recorded.status() << eager.status();
  const ModelConfig& config = (*recorded)->config();
  constexpr int64_t kBlockSize = 16, kBlocksPerSeq = 40;
  auto recorded_cache = KvCache::Create(**recorded_ops, config, 3 * kBlocksPerSeq, kBlockSize);
  auto eager_cache = KvCache::Create(**eager_ops, config, 3 * kBlocksPerSeq, kBlockSize);
  ASSERT_TRUE(recorded_cache.ok() && eager_cache.ok());

  std::mt19937 rng(std::random_device{}());
  std::vector<int64_t> lengths = {500, 37, 5};
  ForwardBatch batch;
  batch.layout.block_size = kBlockSize;
  for (size_t i = 0; i < lengths.size(); ++i) {
    SequenceSlice seq{.token_begin = static_cast<int64_t>(batch.token_ids.size()), .num_tokens = lengths[i],
                      .context_len = lengths[i]};
    for (int64_t b = 0; b < kBlocksPerSeq; ++b) seq.block_table.push_back(static_cast<int32_t>(i * kBlocksPerSeq + b));
    for (int64_t t = 0; t < lengths[i]; ++t) batch.token_ids.push_back(static_cast<int32_t>(rng() % config.vocab_size));
    batch.logit_rows.push_back(seq.token_begin + seq.num_tokens - 1);
    batch.layout.seqs.push_back(std::move(seq));
  }
  for (int step = 0; step <= 30; ++step) {
    auto recorded_logits = (*recorded)->Forward(batch, *recorded_cache);
    auto eager_logits = (*eager)->Forward(batch, *eager_cache);
    ASSERT_TRUE(recorded_logits.ok() && eager_logits.ok()) << recorded_logits.status() << eager_logits.status();
    ASSERT_TRUE(BitwiseEqual(*recorded_logits, *eager_logits)) << "step " << step;
    // Next: one greedy token per sequence; the last sequence ends after step 15.
    if (step == 15) lengths.pop_back();
    ForwardBatch next;
    next.layout.block_size = kBlockSize;
    for (size_t i = 0; i < lengths.size(); ++i) {
      const float* row = recorded_logits->data() + i * config.vocab_size;
      next.token_ids.push_back(static_cast<int32_t>(std::max_element(row, row + config.vocab_size) - row));
      SequenceSlice seq = batch.layout.seqs[i];
      seq.token_begin = static_cast<int64_t>(i);
      seq.num_tokens = 1;
      seq.context_len = ++lengths[i];
      next.layout.seqs.push_back(std::move(seq));
      next.logit_rows.push_back(static_cast<int64_t>(i));
    }
    batch = std::move(next);
  }
  const StepGraphStats stats = GetStepGraphStats(**recorded_ops);
  std::cout << "step graphs: " << stats.captures << " captures, " << stats.replays << " replays, " << stats.eager
            << " eager" << std::endl;
  EXPECT_EQ(stats.eager, 0);
  EXPECT_GE(stats.captures, 3);  // 3 sequences, 2 sequences, and past 512 keys
  EXPECT_GE(stats.replays, 20);
  EXPECT_EQ(GetStepGraphStats(**eager_ops).captures + GetStepGraphStats(**eager_ops).replays, 0);
}

// A prompt chunk at DeepSeek's attention dims (nope 128, rope 64, v 128,
// rank 512: the wgmma kernels of both forms) takes the expanded form; a decode
// in the same step the absorbed one. Each sequence's logits are bitwise those
// it gets alone (every kernel's result for a row depends on its sequence
// only), and the chunk's are those of the absorbed form up to bf16 rounding.
TEST(CudaModelTest, StepsOfBothAttentionFormsAreBatchInvariant) {
  auto ops = NewCudaOps(0, {.step_graphs = false});
  ASSERT_TRUE(ops.ok()) << ops.status();
  const std::string dir =
      absl::StrCat(std::getenv("TEST_TMPDIR") ? std::getenv("TEST_TMPDIR") : "/tmp", "/mixed_forms_gpu");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << R"({
    "model_type": "deepseek_v3", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
    "moe_intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 16, "q_lora_rank": 128,
    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": null,
    "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1, "n_group": 1, "topk_group": 1,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "hidden_act": "silu"})";
  auto model = Model::LoadRandom(dir, **ops, ModelShard{}, /*seed=*/std::random_device{}());
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& config = (*model)->config();
  constexpr int64_t kPrompt = 700, kPrefix = 60, kBlock = 16, kPromptBlocks = (kPrompt + kBlock - 1) / kBlock;
  ASSERT_TRUE(ExpandedIsCheaper(config, 16, kPrompt, kPrompt));
  ASSERT_FALSE(ExpandedIsCheaper(config, 16, 1, kPrefix + 1));
  std::mt19937 rng(std::random_device{}());
  auto ids = [&](int64_t n) {
    std::vector<int32_t> v(n);
    for (int32_t& id : v) id = static_cast<int32_t>(rng() % config.vocab_size);
    return v;
  };
  const std::vector<int32_t> prompt = ids(kPrompt), other = ids(kPrefix + 1);
  auto table = [](int32_t first, int64_t tokens) {
    std::vector<int32_t> t;
    for (int64_t b = 0; b < (tokens + kBlock - 1) / kBlock; ++b) t.push_back(first + static_cast<int32_t>(b));
    return t;
  };
  // Sequences in the order given, each its tokens with its context and blocks; the logits of their last tokens.
  struct Seq {
    std::vector<int32_t> tokens;
    int64_t context;
    std::vector<int32_t> blocks;
  };
  auto run = [&](KvCache& cache, const std::vector<Seq>& seqs, AttentionForm form) {
    ForwardBatch batch;
    batch.layout.block_size = kBlock;
    for (const Seq& seq : seqs) {
      batch.layout.seqs.push_back({.token_begin = static_cast<int64_t>(batch.token_ids.size()),
                                   .num_tokens = static_cast<int64_t>(seq.tokens.size()),
                                   .context_len = seq.context,
                                   .block_table = seq.blocks});
      batch.token_ids.insert(batch.token_ids.end(), seq.tokens.begin(), seq.tokens.end());
      batch.logit_rows.push_back(static_cast<int64_t>(batch.token_ids.size()) - 1);
    }
    auto logits = (*model)->Forward(batch, cache, form);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return logits.ok() ? *logits : std::vector<float>();
  };
  const Seq chunk{prompt, kPrompt, table(0, kPrompt)};
  const Seq prefix{{other.begin(), other.end() - 1}, kPrefix, table(kPromptBlocks, kPrefix + 1)};
  const Seq decode{{other.back()}, kPrefix + 1, table(kPromptBlocks, kPrefix + 1)};
  const size_t vocab = static_cast<size_t>(config.vocab_size);
  auto alone = KvCache::Create(**ops, config, 2 * kPromptBlocks, kBlock);
  ASSERT_TRUE(alone.ok());
  const std::vector<float> chunk_alone = run(*alone, {chunk}, AttentionForm::kCheapest);
  const std::vector<float> chunk_absorbed = run(*alone, {chunk}, AttentionForm::kAbsorbed);
  run(*alone, {prefix}, AttentionForm::kCheapest);
  const std::vector<float> decode_alone = run(*alone, {decode}, AttentionForm::kCheapest);
  ASSERT_EQ(chunk_alone.size(), vocab);
  ASSERT_EQ(decode_alone.size(), vocab);
  EXPECT_LT(RelErr(chunk_alone, chunk_absorbed), 5e-2);  // bf16 roundings of two paths; a wrong kernel is O(1)
  for (const bool decode_first : {false, true}) {
    auto both = KvCache::Create(**ops, config, 2 * kPromptBlocks, kBlock);
    ASSERT_TRUE(both.ok());
    run(*both, {prefix}, AttentionForm::kCheapest);
    const std::vector<float> mixed =
        run(*both, decode_first ? std::vector<Seq>{decode, chunk} : std::vector<Seq>{chunk, decode},
            AttentionForm::kCheapest);
    ASSERT_EQ(mixed.size(), 2 * vocab);
    const std::vector<float> first(mixed.begin(), mixed.begin() + vocab), second(mixed.begin() + vocab, mixed.end());
    EXPECT_TRUE(BitwiseEqual(decode_first ? second : first, chunk_alone)) << "decode first: " << decode_first;
    EXPECT_TRUE(BitwiseEqual(decode_first ? first : second, decode_alone)) << "decode first: " << decode_first;
  }
}

}  // namespace
}  // namespace mlaserve
