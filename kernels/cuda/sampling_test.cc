// CudaOps::SampleTokens against the CPU reference (kernels/sampler.h's rule)
// on fresh random logits (the seed is printed): the same values on both
// backends (float32, and bf16 whose many exact ties exercise the tie rule),
// vocabularies split into padded tensor-parallel slices with the padding
// poisoned, every mix of greedy, temperature, top-k and top-p: the GPU must
// pick the reference's token for every row. Then batch invariance (a row
// samples the same token alone) and ties at a top-k cut taken in id order.
// Needs a GPU.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/ops.h"
#include "kernels/sampler.h"

namespace mlaserve {
namespace {

#define ASSERT_OK(expr)                   \
  do {                                    \
    const absl::Status status_ = (expr);  \
    ASSERT_TRUE(status_.ok()) << status_; \
  } while (0)

struct ShardedLogits {
  int64_t shards = 1, rows = 0, shard_vocab = 0, vocab = 0;
  std::vector<float> values;  // [shards, rows, shard_vocab]
};

// Normal logits with some values repeated (ties), padding set far above
// every logit so that a kernel reading it would pick it.
ShardedLogits RandomLogits(int64_t shards, int64_t rows, int64_t vocab, std::mt19937_64& rng) {
  // Unsharded rows get 3 padding columns; sharded ones the last slice's (as the LM head pads them).
  const int64_t shard_vocab = shards == 1 ? vocab + 3 : (vocab + shards - 1) / shards;
  ShardedLogits l{.shards = shards, .rows = rows, .shard_vocab = shard_vocab, .vocab = vocab};
  l.values.assign(shards * rows * l.shard_vocab, 1e4f);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_int_distribution<int64_t> token(0, vocab - 1);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> row(vocab);
    for (float& x : row) x = normal(rng);
    for (int i = 0; i < 20; ++i) row[token(rng)] = row[token(rng)];
    for (int64_t v = 0; v < vocab; ++v) {
      l.values[((v / l.shard_vocab) * rows + r) * l.shard_vocab + v % l.shard_vocab] = row[v];
    }
  }
  return l;
}

std::vector<SamplerParams> MixedParams(int64_t rows, int64_t vocab, std::mt19937_64& rng) {
  const float temperatures[] = {0.0f, 0.3f, 0.7f, 1.0f, 1.6f};
  const int32_t top_ks[] = {0, 1, 2, 5, 40, static_cast<int32_t>(vocab) + 5};
  const float top_ps[] = {1.0f, 0.95f, 0.6f, 0.2f, 0.01f};
  std::vector<SamplerParams> params(rows);
  for (int64_t r = 0; r < rows; ++r) {
    params[r] = {.temperature = temperatures[rng() % 5], .top_k = top_ks[rng() % 6], .top_p = top_ps[rng() % 5],
                 .seed = rng()};
  }
  return params;
}

class SamplingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto gpu = NewCudaOps();
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(*gpu);
    seed_ = std::random_device{}();
    std::cout << "seed " << seed_ << std::endl;
    rng_.seed(seed_);
  }

  // Tokens of `logits` stored as `dtype` on the GPU, and the reference's
  // tokens of the same (rounded) values.
  void Sample(const ShardedLogits& logits, DType dtype, const std::vector<SamplerParams>& params,
              const std::vector<int64_t>& draws, std::vector<int32_t>* gpu_tokens, std::vector<int32_t>* ref_tokens) {
    const std::vector<int64_t> shape{logits.shards, logits.rows, logits.shard_vocab};
    auto on_gpu = gpu_->Empty(dtype, shape);
    ASSERT_TRUE(on_gpu.ok()) << on_gpu.status();
    ASSERT_OK(gpu_->Upload(logits.values, &*on_gpu));
    std::vector<float> stored(logits.values.size());
    ASSERT_OK(gpu_->Download(*on_gpu, absl::MakeSpan(stored)));
    auto on_cpu = cpu_->Empty(DType::kF32, shape);
    ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
    ASSERT_OK(cpu_->Upload(stored, &*on_cpu));
    gpu_tokens->assign(logits.rows, -1);
    ref_tokens->assign(logits.rows, -1);
    ASSERT_OK(gpu_->SampleTokens(*on_gpu, logits.vocab, params, draws, absl::MakeSpan(*gpu_tokens)));
    ASSERT_OK(cpu_->SampleTokens(*on_cpu, logits.vocab, params, draws, absl::MakeSpan(*ref_tokens)));
  }

  std::unique_ptr<Ops> gpu_;
  std::unique_ptr<Ops> cpu_ = NewCpuOps();
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

TEST_F(SamplingTest, EveryRowPicksTheReferenceToken) {
  for (int64_t vocab : {1, 8, 1000, 32000, 102400}) {
    for (int64_t shards : {1, 3}) {
      if (shards > vocab) continue;
      for (DType dtype : {DType::kF32, DType::kBF16}) {
        const int64_t rows = 61;
        const ShardedLogits logits = RandomLogits(shards, rows, vocab, rng_);
        const std::vector<SamplerParams> params = MixedParams(rows, vocab, rng_);
        std::vector<int64_t> draws(rows);
        for (int64_t& d : draws) d = static_cast<int64_t>(rng_() % 100000);
        std::vector<int32_t> tokens, ref;
        Sample(logits, dtype, params, draws, &tokens, &ref);
        for (int64_t r = 0; r < rows; ++r) {
          EXPECT_EQ(tokens[r], ref[r]) << "vocab " << vocab << " shards " << shards << " " << DTypeName(dtype)
                                       << " row " << r << ": T " << params[r].temperature << " top_k "
                                       << params[r].top_k << " top_p " << params[r].top_p;
        }
      }
    }
  }
}

TEST_F(SamplingTest, ManyDrawsOfOneRowFollowTheReference) {
  // One distribution, 256 draw indices: the draws cover the whole kept set,
  // so the id-order walk is checked at many targets.
  const int64_t rows = 256, vocab = 5000;
  ShardedLogits logits = RandomLogits(1, 1, vocab, rng_);
  ShardedLogits repeated{.shards = 1, .rows = rows, .shard_vocab = logits.shard_vocab, .vocab = vocab};
  for (int64_t r = 0; r < rows; ++r) repeated.values.insert(repeated.values.end(), logits.values.begin(), logits.values.end());
  for (const SamplerParams& p : {SamplerParams{.temperature = 2.0f, .seed = 3}, SamplerParams{.temperature = 1.0f, .top_k = 50, .seed = 4},
                                 SamplerParams{.temperature = 1.0f, .top_p = 0.9f, .seed = 5}}) {
    std::vector<int64_t> draws(rows);
    for (int64_t r = 0; r < rows; ++r) draws[r] = r;
    std::vector<int32_t> tokens, ref;
    Sample(repeated, DType::kF32, std::vector<SamplerParams>(rows, p), draws, &tokens, &ref);
    EXPECT_EQ(tokens, ref) << "T " << p.temperature << " top_k " << p.top_k << " top_p " << p.top_p;
  }
}

TEST_F(SamplingTest, ARowSamplesTheSameTokenAloneAndInABatch) {
  const int64_t rows = 24, vocab = 30000;
  const ShardedLogits batch = RandomLogits(1, rows, vocab, rng_);
  const std::vector<SamplerParams> params = MixedParams(rows, vocab, rng_);
  const std::vector<int64_t> draws(rows, 17);
  std::vector<int32_t> tokens, ref;
  Sample(batch, DType::kBF16, params, draws, &tokens, &ref);
  for (int64_t r = 0; r < rows; ++r) {
    ShardedLogits alone{.shards = 1, .rows = 1, .shard_vocab = batch.shard_vocab, .vocab = vocab};
    alone.values.assign(batch.values.begin() + r * batch.shard_vocab, batch.values.begin() + (r + 1) * batch.shard_vocab);
    std::vector<int32_t> alone_tokens, alone_ref;
    Sample(alone, DType::kBF16, {params[r]}, {draws[r]}, &alone_tokens, &alone_ref);
    EXPECT_EQ(alone_tokens[0], tokens[r]) << "row " << r;
  }
}

TEST_F(SamplingTest, TiesAtATopKCutAreTakenInIdOrder) {
  // Ten tokens share the largest logit; top_k = 3 keeps ids 2, 5, 9 only.
  const int64_t vocab = 40, rows = 200;
  std::vector<float> row(vocab, 0.0f);
  for (int64_t v : {2, 5, 9, 11, 17, 20, 23, 30, 33, 39}) row[v] = 4.0f;
  ShardedLogits logits{.shards = 1, .rows = rows, .shard_vocab = vocab, .vocab = vocab};
  for (int64_t r = 0; r < rows; ++r) logits.values.insert(logits.values.end(), row.begin(), row.end());
  std::vector<int64_t> draws(rows);
  for (int64_t r = 0; r < rows; ++r) draws[r] = r;
  std::vector<int32_t> tokens, ref;
  Sample(logits, DType::kF32, std::vector<SamplerParams>(rows, {.temperature = 1.0f, .top_k = 3, .seed = 1}), draws,
         &tokens, &ref);
  EXPECT_EQ(tokens, ref);
  std::vector<int> seen(vocab);
  for (int32_t t : tokens) ++seen[t];
  EXPECT_GT(seen[2], 0);
  EXPECT_GT(seen[5], 0);
  EXPECT_GT(seen[9], 0);
  EXPECT_EQ(seen[2] + seen[5] + seen[9], rows);
}

}  // namespace
}  // namespace mlaserve
