// Each CPU op against a direct double-precision computation on fresh random inputs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cpu/fp8_rows.h"
#include "kernels/latent_row.h"
#include "kernels/ops.h"

namespace mlaserve {
namespace {

class CpuOpsTest : public ::testing::Test {
 protected:
  Tensor Random(std::vector<int64_t> shape, float scale = 1.0f) {
    Tensor t = Make(std::move(shape));
    std::normal_distribution<float> normal(0.0f, scale);
    for (int64_t i = 0; i < t.numel(); ++i) t.as<float>()[i] = normal(rng_);
    return t;
  }
  Tensor Make(std::vector<int64_t> shape, DType dtype = DType::kF32) {
    auto t = ops_->Empty(dtype, std::move(shape));
    EXPECT_TRUE(t.ok());
    // Poison so that unwritten outputs show.
    if (dtype == DType::kF32) std::fill_n(t->as<float>(), t->numel(), std::nanf(""));
    return *std::move(t);
  }
  // Sequences of (context, new tokens) laid out one after the other, their
  // blocks drawn at random from a pool of `pool_blocks`; *tokens is the rows.
  AttentionLayout RaggedLayout(const std::vector<std::pair<int64_t, int64_t>>& seqs, int64_t block,
                               int64_t pool_blocks, int64_t* tokens) {
    AttentionLayout layout{.block_size = block};
    std::vector<int32_t> free_blocks(pool_blocks);
    std::iota(free_blocks.begin(), free_blocks.end(), 0);
    std::shuffle(free_blocks.begin(), free_blocks.end(), rng_);
    *tokens = 0;
    for (auto [context, count] : seqs) {
      SequenceSlice s{.token_begin = *tokens, .num_tokens = count, .context_len = context};
      for (int64_t b = 0; b < (context + block - 1) / block; ++b) {
        s.block_table.push_back(free_blocks.back());
        free_blocks.pop_back();
      }
      layout.seqs.push_back(s);
      *tokens += count;
    }
    return layout;
  }
  static double RelErr(const Tensor& out, const std::vector<double>& ref) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      diff += (out.as<float>()[i] - ref[i]) * (out.as<float>()[i] - ref[i]);
      norm += ref[i] * ref[i];
    }
    return std::sqrt(diff / norm);
  }

  std::unique_ptr<Ops> ops_ = NewCpuOps();
  std::mt19937 rng_{std::random_device{}()};
};

TEST_F(CpuOpsTest, Linear) {
  Tensor x = Random({7, 33}), w = Random({19, 33}), y = Make({7, 19});
  ASSERT_TRUE(ops_->Linear(x, w, &y).ok());
  std::vector<double> ref(7 * 19);
  for (int t = 0; t < 7; ++t)
    for (int j = 0; j < 19; ++j)
      for (int k = 0; k < 33; ++k) ref[t * 19 + j] += double(x.as<float>()[t * 33 + k]) * w.as<float>()[j * 33 + k];
  EXPECT_LT(RelErr(y, ref), 1e-6);
  Tensor bad = Make({7, 18});
  EXPECT_EQ(ops_->Linear(x, w, &bad).code(), absl::StatusCode::kInvalidArgument);
}

// QuantizeFp8's rule, checked element by element: per row and 128 columns,
// scale = amax / 448, values e4m3 of x / scale, the group's amax exactly 448.
TEST_F(CpuOpsTest, QuantizeFp8PerRowAndGroup) {
  const int64_t rows = 5, k = 272;  // two full groups and a partial one
  Tensor w = Random({rows, k}, 3.0f);
  std::fill_n(w.as<float>() + 2 * k, k, 0.0f);  // an all-zero row
  auto q = ops_->QuantizeFp8(w);
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_EQ(q->dtype, DType::kF8E4M3);
  ASSERT_NE(q->scale, nullptr);
  ASSERT_EQ(q->scale->shape, (std::vector<int64_t>{rows, 3}));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < 3; ++g) {
      const int64_t begin = g * 128, end = std::min<int64_t>(k, begin + 128);
      float amax = 0;
      for (int64_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(w.as<float>()[r * k + i]));
      const float scale = q->scale->as<float>()[r * 3 + g];
      EXPECT_EQ(scale, std::max(amax, 1e-4f) / 448.0f) << r << " " << g;
      float qmax = 0;
      for (int64_t i = begin; i < end; ++i) {
        const float x = w.as<float>()[r * k + i];
        const float v = F8E4M3ToF32(q->as<uint8_t>()[r * k + i]);
        qmax = std::max(qmax, std::fabs(v));
        // e4m3 rounding: half a step, 1/16 of a normal value (3 mantissa bits),
        // 2^-10 of the scale below 2^-6 (subnormals, steps of 2^-9).
        EXPECT_LE(std::fabs(v * scale - x), std::max(std::fabs(x) / 16, scale * 0x1p-10f) * 1.0001f)
            << r << " " << i;
      }
      EXPECT_EQ(qmax, amax > 0 ? 448.0f : 0.0f);
    }
  }
}

// FP8 Linear against the rule computed in double from the quantized values.
TEST_F(CpuOpsTest, Fp8LinearIsTheGroupScaledProduct) {
  const int64_t rows = 3, k = 400, n = 7;
  Tensor x = Random({rows, k}), w = Random({n, k}, 0.05f);
  auto wq = ops_->QuantizeFp8(w), xq = ops_->QuantizeFp8(x);
  ASSERT_TRUE(wq.ok() && xq.ok());
  Tensor out = Make({rows, n});
  ASSERT_TRUE(ops_->Linear(x, *wq, &out).ok());
  std::vector<double> ref(rows * n), exact(rows * n);
  const int64_t groups = 4;
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t i = 0; i < k; ++i) {
        const int64_t g = i / 128;
        ref[t * n + j] += double(F8E4M3ToF32(xq->as<uint8_t>()[t * k + i])) * xq->scale->as<float>()[t * groups + g] *
                          F8E4M3ToF32(wq->as<uint8_t>()[j * k + i]) * wq->scale->as<float>()[j * groups + g];
        exact[t * n + j] += double(x.as<float>()[t * k + i]) * w.as<float>()[j * k + i];
      }
    }
  }
  EXPECT_LT(RelErr(out, ref), 1e-5);
  EXPECT_LT(RelErr(out, exact), 0.1);  // FP8's own error: a few percent
  EXPECT_GT(RelErr(out, exact), 1e-3);
  Tensor no_scales = *wq;
  no_scales.scale = nullptr;
  EXPECT_EQ(ops_->Linear(x, no_scales, &out).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CpuOpsTest, SampleTokensReadsEachRowAcrossVocabularySlices) {
  // 3 slices of 5 columns over a vocabulary of 13: the last two are padding
  // set above every logit, which a wrong layout would sample.
  const int64_t shards = 3, rows = 4, shard_vocab = 5, vocab = 13;
  Tensor logits = Random({shards, rows, shard_vocab}, 2.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = vocab - 2 * shard_vocab; c < shard_vocab; ++c) logits.as<float>()[(2 * rows + r) * shard_vocab + c] = 1e4f;
  }
  const std::vector<SamplerParams> params = {{}, {.temperature = 1.0f, .seed = 1}, {.temperature = 0.5f, .top_k = 3, .seed = 2},
                                             {.temperature = 2.0f, .top_p = 0.5f, .seed = 3}};
  const std::vector<int64_t> draws = {0, 5, 6, 7};
  std::vector<int32_t> tokens(rows, -1);
  ASSERT_TRUE(ops_->SampleTokens(logits, vocab, params, draws, absl::MakeSpan(tokens)).ok());
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> row(vocab);
    for (int64_t v = 0; v < vocab; ++v) row[v] = logits.as<float>()[((v / shard_vocab) * rows + r) * shard_vocab + v % shard_vocab];
    EXPECT_EQ(tokens[r], SampleToken(row, params[r], draws[r])) << "row " << r;
    EXPECT_LT(tokens[r], vocab);
  }
  EXPECT_FALSE(ops_->SampleTokens(logits, 16, params, draws, absl::MakeSpan(tokens)).ok());
  EXPECT_FALSE(ops_->SampleTokens(logits, vocab, params, {0}, absl::MakeSpan(tokens)).ok());
}

TEST_F(CpuOpsTest, HeadLinear) {
  Tensor x = Random({5, 3, 8}), w = Random({3, 6, 8}), y = Make({5, 3, 6});
  ASSERT_TRUE(ops_->HeadLinear(x, w, &y).ok());
  std::vector<double> ref(5 * 3 * 6);
  for (int t = 0; t < 5; ++t)
    for (int h = 0; h < 3; ++h)
      for (int j = 0; j < 6; ++j)
        for (int k = 0; k < 8; ++k)
          ref[(t * 3 + h) * 6 + j] += double(x.as<float>()[(t * 3 + h) * 8 + k]) * w.as<float>()[(h * 6 + j) * 8 + k];
  EXPECT_LT(RelErr(y, ref), 1e-6);
}

TEST_F(CpuOpsTest, RmsNormAndFusedAdd) {
  Tensor x = Random({4, 50}), w = Random({50}), y = Make({4, 50});
  ASSERT_TRUE(ops_->RmsNorm(x, w, 1e-6f, &y).ok());
  std::vector<double> ref(200);
  for (int t = 0; t < 4; ++t) {
    double ms = 0;
    for (int i = 0; i < 50; ++i) ms += double(x.as<float>()[t * 50 + i]) * x.as<float>()[t * 50 + i];
    for (int i = 0; i < 50; ++i) ref[t * 50 + i] = x.as<float>()[t * 50 + i] / std::sqrt(ms / 50 + 1e-6) * w.as<float>()[i];
  }
  EXPECT_LT(RelErr(y, ref), 1e-6);

  Tensor residual = Random({4, 50}), delta = Random({4, 50}), z = Make({4, 50});
  std::vector<float> sum(200);
  for (int i = 0; i < 200; ++i) sum[i] = residual.as<float>()[i] + delta.as<float>()[i];
  ASSERT_TRUE(ops_->AddRmsNorm(&residual, delta, w, 1e-6f, &z).ok());
  Tensor expected = Make({4, 50}), summed = Make({4, 50});
  std::copy(sum.begin(), sum.end(), summed.as<float>());
  ASSERT_TRUE(ops_->RmsNorm(summed, w, 1e-6f, &expected).ok());
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(residual.as<float>()[i], sum[i]);
    EXPECT_EQ(z.as<float>()[i], expected.as<float>()[i]);
  }
}

TEST_F(CpuOpsTest, AddRowsAccumulatesRepeatedRows) {
  Tensor dst = Random({6, 9}), src = Random({5, 9});
  std::vector<double> ref(dst.as<float>(), dst.as<float>() + dst.numel());
  const std::vector<int32_t> rows = {4, 0, 4, 5, 4};
  for (size_t i = 0; i < rows.size(); ++i)
    for (int j = 0; j < 9; ++j) ref[rows[i] * 9 + j] += src.as<float>()[i * 9 + j];
  ASSERT_TRUE(ops_->AddRows(src, rows, &dst).ok());
  EXPECT_LT(RelErr(dst, ref), 1e-7);
  EXPECT_EQ(ops_->AddRows(src, {0, 1, 2, 3, 6}, &dst).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ops_->AddRows(src, {0, 1}, &dst).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CpuOpsTest, UploadConvertsToTheTensorsType) {
  Tensor ids = Make({3}, DType::kI32);
  ASSERT_TRUE(ops_->Upload(std::vector<float>{7, 0, 1023}, &ids).ok());
  EXPECT_EQ(std::vector<int32_t>(ids.as<int32_t>(), ids.as<int32_t>() + 3), (std::vector<int32_t>{7, 0, 1023}));
}

TEST_F(CpuOpsTest, FillRandomIsSeededNormal) {
  Tensor a = Make({1000, 100}), b = Make({1000, 100}), c = Make({1000, 100});
  ASSERT_TRUE(ops_->FillRandom(&a, 7, 0.5f, 2.0f).ok());
  ASSERT_TRUE(ops_->FillRandom(&b, 7, 0.5f, 2.0f).ok());
  ASSERT_TRUE(ops_->FillRandom(&c, 8, 0.5f, 2.0f).ok());
  double sum = 0, sum_sq = 0;
  int64_t same_as_c = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    ASSERT_EQ(a.as<float>()[i], b.as<float>()[i]);
    same_as_c += a.as<float>()[i] == c.as<float>()[i];
    sum += a.as<float>()[i];
    sum_sq += double(a.as<float>()[i]) * a.as<float>()[i];
  }
  const double n = a.numel(), mean = sum / n, var = sum_sq / n - mean * mean;
  EXPECT_NEAR(mean, 0.5, 0.02);
  EXPECT_NEAR(std::sqrt(var), 2.0, 0.02);
  EXPECT_LT(same_as_c, 10);
}

TEST_F(CpuOpsTest, RopeRotatesPairsByPositionTimesFrequency) {
  for (bool interleaved : {true, false}) {
    RopeTable table{.rope_dim = 8, .inv_freq = {1.0f, 0.5f, 0.1f, 0.01f}, .attention_factor = 1.3f,
                    .interleaved = interleaved};
    Tensor x = Random({3, 2, 8});
    std::vector<float> before(x.as<float>(), x.as<float>() + x.numel());
    std::vector<int32_t> positions = {0, 7, 1000};
    ASSERT_TRUE(ops_->Rope(&x, positions, table).ok());
    std::vector<double> ref(before.size());
    for (int t = 0; t < 3; ++t)
      for (int h = 0; h < 2; ++h)
        for (int i = 0; i < 4; ++i) {
          int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + 4;
          double angle = positions[t] * double(table.inv_freq[i]);
          const float* v = before.data() + (t * 2 + h) * 8;
          ref[(t * 2 + h) * 8 + a] = 1.3 * (v[a] * std::cos(angle) - v[b] * std::sin(angle));
          ref[(t * 2 + h) * 8 + b] = 1.3 * (v[b] * std::cos(angle) + v[a] * std::sin(angle));
        }
    EXPECT_LT(RelErr(x, ref), 1e-5) << interleaved;
  }
}

TEST_F(CpuOpsTest, SiluMulAndEmbedding) {
  Tensor x = Random({3, 10}), y = Make({3, 5});
  ASSERT_TRUE(ops_->SiluMul(x, &y).ok());
  std::vector<double> ref(15);
  for (int t = 0; t < 3; ++t)
    for (int i = 0; i < 5; ++i) {
      double g = x.as<float>()[t * 10 + i];
      ref[t * 5 + i] = g / (1 + std::exp(-g)) * x.as<float>()[t * 10 + 5 + i];
    }
  EXPECT_LT(RelErr(y, ref), 1e-6);

  Tensor table = Random({6, 4}), e = Make({3, 4});
  std::vector<int32_t> ids = {5, 0, 5};
  ASSERT_TRUE(ops_->Embedding(table, ids, &e).ok());
  for (int t = 0; t < 3; ++t)
    for (int i = 0; i < 4; ++i) EXPECT_EQ(e.as<float>()[t * 4 + i], table.as<float>()[ids[t] * 4 + i]);
  std::vector<int32_t> bad = {6};
  Tensor one = Make({1, 4});
  EXPECT_EQ(ops_->Embedding(table, bad, &one).code(), absl::StatusCode::kInvalidArgument);
}

// Absorbed attention over a paged cache with shuffled blocks against expanded
// attention computed densely here: W_UK and W_UV folded by hand.
TEST_F(CpuOpsTest, AbsorbedAttentionOverPagedCacheMatchesDenseExpanded) {
  const int64_t heads = 3, rank = 16, rope = 4, nope = 6, dv = 5, block = 4, layers = 2, layer = 1;
  const std::vector<std::pair<int64_t, int64_t>> seqs = {{1, 1}, {9, 3}, {13, 13}};  // (context, new tokens)
  Tensor cache = Random({20, layers, block, rank + rope});
  Tensor w_uk = Random({heads, nope, rank}), w_uv = Random({heads, dv, rank});
  int64_t tokens = 0;
  const AttentionLayout layout = RaggedLayout(seqs, block, 20, &tokens);
  Tensor q_nope = Random({tokens, heads, nope}), q_rope = Random({tokens, heads, rope});
  // q_latent = q_nope * W_UK (per head).
  Tensor q_latent = Make({tokens, heads, rank});
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t r = 0; r < rank; ++r) {
        double s = 0;
        for (int64_t n = 0; n < nope; ++n) s += q_nope.as<float>()[(t * heads + h) * nope + n] * w_uk.as<float>()[(h * nope + n) * rank + r];
        q_latent.as<float>()[(t * heads + h) * rank + r] = s;
      }
  Tensor o_latent = Make({tokens, heads, rank});
  ASSERT_TRUE(ops_->MlaAbsorbedAttention(q_latent, q_rope, cache, layer, layout, 0.3f, &o_latent).ok());

  std::vector<double> ref(tokens * heads * dv), got(tokens * heads * dv);
  for (const SequenceSlice& s : layout.seqs) {
    auto row = [&](int64_t p) {
      return cache.as<float>() + ((s.block_table[p / block] * layers + layer) * block + p % block) * (rank + rope);
    };
    for (int64_t i = 0; i < s.num_tokens; ++i) {
      const int64_t t = s.token_begin + i, pos = s.context_len - s.num_tokens + i;
      for (int64_t h = 0; h < heads; ++h) {
        std::vector<double> scores(pos + 1);
        for (int64_t j = 0; j <= pos; ++j) {
          double dot = 0;
          for (int64_t n = 0; n < nope; ++n) {
            double k = 0;  // expanded key: W_UK_h * c_kv
            for (int64_t r = 0; r < rank; ++r) k += w_uk.as<float>()[(h * nope + n) * rank + r] * row(j)[r];
            dot += q_nope.as<float>()[(t * heads + h) * nope + n] * k;
          }
          for (int64_t r = 0; r < rope; ++r) dot += q_rope.as<float>()[(t * heads + h) * rope + r] * row(j)[rank + r];
          scores[j] = dot * 0.3;
        }
        double mx = *std::max_element(scores.begin(), scores.end()), sum = 0;
        for (double& v : scores) sum += (v = std::exp(v - mx));
        for (int64_t d = 0; d < dv; ++d) {
          double acc = 0, out = 0;
          for (int64_t j = 0; j <= pos; ++j) {
            double v = 0;
            for (int64_t r = 0; r < rank; ++r) v += w_uv.as<float>()[(h * dv + d) * rank + r] * row(j)[r];
            acc += scores[j] / sum * v;
          }
          for (int64_t r = 0; r < rank; ++r) out += w_uv.as<float>()[(h * dv + d) * rank + r] * o_latent.as<float>()[(t * heads + h) * rank + r];
          ref[(t * heads + h) * dv + d] = acc;
          got[(t * heads + h) * dv + d] = out;
        }
      }
    }
  }
  Tensor got_t = Make({tokens, heads, dv});
  std::copy(got.begin(), got.end(), got_t.as<float>());
  EXPECT_LT(RelErr(got_t, ref), 1e-5);
}

TEST_F(CpuOpsTest, ExpandedAttentionIsCausalOverTheSuffix) {
  const int64_t heads = 2, nope = 4, rope = 2, dv = 3, keys = 6, queries = 2;
  Tensor qn = Random({queries, heads, nope}), qr = Random({queries, heads, rope});
  Tensor kn = Random({keys, heads, nope}), kr = Random({keys, rope}), v = Random({keys, heads, dv});
  Tensor out = Make({queries, heads, dv});
  ASSERT_TRUE(ops_->MlaExpandedAttention(qn, qr, kn, kr, v, 0, 0.5f, &out).ok());
  std::vector<double> ref(queries * heads * dv);
  for (int64_t t = 0; t < queries; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t visible = keys - queries + t + 1;
      std::vector<double> s(visible);
      for (int64_t j = 0; j < visible; ++j) {
        double dot = 0;
        for (int64_t n = 0; n < nope; ++n) dot += qn.as<float>()[(t * heads + h) * nope + n] * kn.as<float>()[(j * heads + h) * nope + n];
        for (int64_t r = 0; r < rope; ++r) dot += qr.as<float>()[(t * heads + h) * rope + r] * kr.as<float>()[j * rope + r];
        s[j] = 0.5 * dot;
      }
      double mx = *std::max_element(s.begin(), s.end()), sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t d = 0; d < dv; ++d)
        for (int64_t j = 0; j < visible; ++j) ref[(t * heads + h) * dv + d] += s[j] / sum * v.as<float>()[(j * heads + h) * dv + d];
    }
  EXPECT_LT(RelErr(out, ref), 1e-6);
}

TEST_F(CpuOpsTest, ExpandedAttentionByGroupsOfHeadsWritesOnlyThoseHeads) {
  const int64_t heads = 5, nope = 4, rope = 2, dv = 3, keys = 7, queries = 3;
  Tensor qn = Random({queries, heads, nope}), qr = Random({queries, heads, rope});
  Tensor kn = Random({keys, heads, nope}), kr = Random({keys, rope}), v = Random({keys, heads, dv});
  Tensor whole = Make({queries, heads, dv});
  ASSERT_TRUE(ops_->MlaExpandedAttention(qn, qr, kn, kr, v, 0, 0.5f, &whole).ok());
  // Heads [2, 5) of the keys and values, as a caller expanding a group at a time holds them.
  const int64_t first = 2, group = 3;
  Tensor kn_group = Make({keys, group, nope}), v_group = Make({keys, group, dv});
  for (int64_t j = 0; j < keys; ++j) {
    std::copy_n(kn.as<float>() + (j * heads + first) * nope, group * nope, kn_group.as<float>() + j * group * nope);
    std::copy_n(v.as<float>() + (j * heads + first) * dv, group * dv, v_group.as<float>() + j * group * dv);
  }
  Tensor out = Make({queries, heads, dv});  // poisoned
  ASSERT_TRUE(ops_->MlaExpandedAttention(qn, qr, kn_group, kr, v_group, first, 0.5f, &out).ok());
  for (int64_t t = 0; t < queries; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t d = 0; d < dv; ++d) {
        const float got = out.as<float>()[(t * heads + h) * dv + d];
        if (h < first) {
          EXPECT_TRUE(std::isnan(got)) << "head " << h << " was written";
        } else {
          EXPECT_EQ(got, whole.as<float>()[(t * heads + h) * dv + d]) << "token " << t << " head " << h;
        }
      }
    }
  }
  EXPECT_EQ(ops_->MlaExpandedAttention(qn, qr, kn_group, kr, v_group, 3, 0.5f, &out).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ops_->MlaExpandedAttention(qn, qr, kn_group, kr, v_group, -1, 0.5f, &out).code(),
            absl::StatusCode::kInvalidArgument);
}

// Decode context parallelism: a sequence's blocks dealt at random to `parts`
// ranks (each rank's table holding kBlockElsewhere for the others'), the
// ranks' parts combined, equal attention over the whole table -- ragged
// sequences, a rank holding none of a query's keys among them.
TEST_F(CpuOpsTest, AttentionPartsOverShardedBlocksCombineToTheWhole) {
  const int64_t heads = 3, rank = 16, rope = 4, block = 4, layers = 2, layer = 1;
  const std::vector<std::pair<int64_t, int64_t>> seqs = {{1, 1}, {9, 3}, {22, 5}};  // (context, new tokens)
  Tensor cache = Random({24, layers, block, rank + rope});
  int64_t tokens = 0;
  const AttentionLayout whole = RaggedLayout(seqs, block, 24, &tokens);
  Tensor q_latent = Random({tokens, heads, rank}), q_rope = Random({tokens, heads, rope});
  Tensor expected = Make({tokens, heads, rank});
  ASSERT_TRUE(ops_->MlaAbsorbedAttention(q_latent, q_rope, cache, layer, whole, 0.3f, &expected).ok());

  for (int64_t parts : {2, 3}) {
    std::uniform_int_distribution<int64_t> owner(0, parts - 1);
    std::vector<AttentionLayout> shards(parts, AttentionLayout{.block_size = block});
    for (const SequenceSlice& s : whole.seqs) {
      for (AttentionLayout& shard : shards) shard.seqs.push_back(s);
      for (size_t b = 0; b < s.block_table.size(); ++b) {
        const int64_t held_by = owner(rng_);
        for (int64_t p = 0; p < parts; ++p) {
          if (p != held_by) shards[p].seqs.back().block_table[b] = kBlockElsewhere;
        }
      }
    }
    Tensor out_parts = Make({parts, tokens, heads, rank}), lse = Make({parts, tokens, heads});
    for (int64_t p = 0; p < parts; ++p) {
      Tensor out = Reshape(SliceRows(out_parts, p, 1), {tokens, heads, rank});
      Tensor part_lse = Reshape(SliceRows(lse, p, 1), {tokens, heads});
      ASSERT_TRUE(ops_->MlaAbsorbedAttentionPart(q_latent, q_rope, cache, layer, shards[p], 0.3f, &out, &part_lse).ok());
    }
    // The one-key sequence's query sees only its rank's block: the others' lse is -inf.
    int64_t empty = 0;
    for (int64_t p = 0; p < parts; ++p) empty += std::isinf(lse.as<float>()[p * tokens * heads]);
    EXPECT_EQ(empty, parts - 1);
    Tensor combined = Make({tokens, heads, rank});
    ASSERT_TRUE(ops_->CombineAttentionParts(out_parts, lse, &combined).ok());
    std::vector<double> ref(expected.as<float>(), expected.as<float>() + expected.numel());
    EXPECT_LT(RelErr(combined, ref), 1e-5) << parts << " parts";
  }
  // A whole-table read refuses a table with a block held elsewhere.
  AttentionLayout sharded = whole;
  sharded.seqs[2].block_table[1] = kBlockElsewhere;
  EXPECT_FALSE(ops_->MlaAbsorbedAttention(q_latent, q_rope, cache, layer, sharded, 0.3f, &expected).ok());
}

TEST_F(CpuOpsTest, LatentCacheWriteThenGatherRoundTrips) {
  const int64_t rank = 6, rope = 2, block = 3;
  Tensor cache = Make({5, 2, block, rank + rope});
  Tensor c_kv = Random({7, rank}), k_rope = Random({7, rope});
  std::vector<int32_t> table = {4, 0, 2};
  std::vector<int64_t> slots;
  for (int64_t p = 0; p < 7; ++p) slots.push_back(table[p / block] * block + p % block);
  ASSERT_TRUE(ops_->WriteLatentCache(c_kv, k_rope, slots, 1, &cache).ok());
  Tensor c2 = Make({7, rank}), r2 = Make({7, rope});
  ASSERT_TRUE(ops_->GatherLatent(cache, 1, table, 7, &c2, &r2).ok());
  for (int64_t i = 0; i < 7 * rank; ++i) EXPECT_EQ(c2.as<float>()[i], c_kv.as<float>()[i]);
  for (int64_t i = 0; i < 7 * rope; ++i) EXPECT_EQ(r2.as<float>()[i], k_rope.as<float>()[i]);
  std::vector<int64_t> bad_slot = {15};
  EXPECT_FALSE(ops_->WriteLatentCache(SliceRows(c_kv, 0, 1), SliceRows(k_rope, 0, 1), bad_slot, 0, &cache).ok());
  // A token of a block another rank holds is not written.
  std::vector<int64_t> elsewhere = slots;
  elsewhere[2] = kSlotElsewhere;
  Tensor other_c = Random({7, rank}), other_r = Random({7, rope});
  ASSERT_TRUE(ops_->WriteLatentCache(other_c, other_r, elsewhere, 1, &cache).ok());
  ASSERT_TRUE(ops_->GatherLatent(cache, 1, table, 7, &c2, &r2).ok());
  for (int64_t p = 0; p < 7; ++p) {
    const Tensor& src = p == 2 ? c_kv : other_c;
    for (int64_t i = 0; i < rank; ++i) EXPECT_EQ(c2.as<float>()[p * rank + i], src.as<float>()[p * rank + i]);
  }
}

// An FP8 cache holds each row as kernels/latent_row.h lays it out (c_kv quantized
// per 128 values, the last group partial here; k_rope in bf16), reads back as
// e4m3 * scale, and attention over it is attention over those values.
TEST_F(CpuOpsTest, Fp8LatentCacheHoldsQuantizedRowsThatAttentionReads) {
  const int64_t rank = 160, rope = 6, block = 3, layers = 2, layer = 1, positions = 7;
  const Fp8LatentRow format{rank, rope};
  ASSERT_EQ(format.scales_offset(), 160);
  ASSERT_EQ(format.rope_offset(), 176);
  ASSERT_EQ(format.bytes(), 192);
  Tensor fp8 = Make({5, layers, block, format.bytes()}, DType::kU8);
  Tensor c_kv = Random({positions, rank}), k_rope = Random({positions, rope});
  std::normal_distribution<float> spread(0.0f, 2.0f);
  for (int64_t p = 0; p < positions; ++p) {  // rows and groups of very different sizes
    for (int64_t i = 0; i < rank; ++i) c_kv.as<float>()[p * rank + i] *= std::exp(spread(rng_)) * (i < 128 ? 1 : 50);
  }
  const std::vector<int32_t> table = {4, 0, 2};
  std::vector<int64_t> slots;
  for (int64_t p = 0; p < positions; ++p) slots.push_back(table[p / block] * block + p % block);
  ASSERT_TRUE(ops_->WriteLatentCache(c_kv, k_rope, slots, layer, &fp8).ok());

  Tensor c_expected = Make({positions, rank}), r_expected = Make({positions, rope});
  for (int64_t p = 0; p < positions; ++p) {
    std::vector<uint8_t> q(rank);
    std::vector<float> scales(Fp8Groups(rank));
    QuantizeFp8Row(c_kv.as<float>() + p * rank, rank, q.data(), scales.data());
    const uint8_t* row = fp8.as<uint8_t>() + ((slots[p] / block * layers + layer) * block + slots[p] % block) * format.bytes();
    for (int64_t i = 0; i < rank; ++i) ASSERT_EQ(row[i], q[i]) << p << " " << i;
    for (size_t g = 0; g < scales.size(); ++g) {
      float stored;
      std::memcpy(&stored, row + format.scales_offset() + 4 * g, 4);
      ASSERT_EQ(stored, scales[g]);
    }
    for (int64_t i = 0; i < rank; ++i) c_expected.as<float>()[p * rank + i] = F8E4M3ToF32(q[i]) * scales[i / 128];
    for (int64_t i = 0; i < rope; ++i) {
      r_expected.as<float>()[p * rope + i] = Bf16ToF32(F32ToBf16(k_rope.as<float>()[p * rope + i]));
    }
  }
  Tensor c_read = Make({positions, rank}), r_read = Make({positions, rope});
  ASSERT_TRUE(ops_->GatherLatent(fp8, layer, table, positions, &c_read, &r_read).ok());
  for (int64_t i = 0; i < positions * rank; ++i) ASSERT_EQ(c_read.as<float>()[i], c_expected.as<float>()[i]) << i;
  for (int64_t i = 0; i < positions * rope; ++i) ASSERT_EQ(r_read.as<float>()[i], r_expected.as<float>()[i]) << i;
  // e4m3 keeps 3 mantissa bits: a few percent of each row's norm, never nothing.
  std::vector<double> exact(c_kv.as<float>(), c_kv.as<float>() + positions * rank);
  EXPECT_LT(RelErr(c_read, exact), 0.06);
  EXPECT_GT(RelErr(c_read, exact), 1e-3);

  // Attention over the FP8 cache is attention over a float cache of the values it holds.
  Tensor dense = Make({5, layers, block, rank + rope});
  ASSERT_TRUE(ops_->WriteLatentCache(c_expected, r_expected, slots, layer, &dense).ok());
  const int64_t heads = 2;
  AttentionLayout layout{.block_size = block,
                         .seqs = {{.token_begin = 0, .num_tokens = 3, .context_len = positions, .block_table = table}}};
  Tensor q_latent = Random({3, heads, rank}, 0.05f), q_rope = Random({3, heads, rope});
  Tensor from_fp8 = Make({3, heads, rank}), from_dense = Make({3, heads, rank});
  ASSERT_TRUE(ops_->MlaAbsorbedAttention(q_latent, q_rope, fp8, layer, layout, 0.3f, &from_fp8).ok());
  ASSERT_TRUE(ops_->MlaAbsorbedAttention(q_latent, q_rope, dense, layer, layout, 0.3f, &from_dense).ok());
  for (int64_t i = 0; i < from_fp8.numel(); ++i) ASSERT_EQ(from_fp8.as<float>()[i], from_dense.as<float>()[i]) << i;

  // A byte cache whose rows are not this format's width is refused.
  Tensor narrow = Make({5, layers, block, rank + rope}, DType::kU8);
  EXPECT_FALSE(ops_->WriteLatentCache(c_kv, k_rope, slots, layer, &narrow).ok());
  EXPECT_FALSE(ops_->MlaAbsorbedAttention(q_latent, q_rope, narrow, layer, layout, 0.3f, &from_fp8).ok());
}

TEST_F(CpuOpsTest, RouterSigmoidGroupLimitedWithBias) {
  // 8 experts in 4 groups of 2; bias steers selection, weights come from unbiased scores.
  Tensor logits = Make({1, 8}), bias = Make({8});
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 0.4f, 3.0f, -3.0f, 0.0f, 0.1f};
  std::vector<float> b = {0, 0, 0, 0, 0, 0, 5, 0};
  std::copy(l.begin(), l.end(), logits.as<float>());
  std::copy(b.begin(), b.end(), bias.as<float>());
  RouterConfig config{.sigmoid = true, .noaux_tc = true, .num_groups = 4, .topk_groups = 2, .top_k = 2,
                      .normalize = true, .scaling = 2.5f};
  Tensor ids = Make({1, 2}, DType::kI32), weights = Make({1, 2});
  ASSERT_TRUE(ops_->MoeRoute(logits, &bias, config, &ids, &weights).ok());
  // Group scores (sum of top-2 biased): g0 = s(2)+s(-1), g1 = s(.5)+s(.4), g2 = s(3)+s(-3), g3 = 5+s(0)+s(.1).
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  std::vector<double> group = {sig(2) + sig(-1), sig(0.5) + sig(0.4), sig(3) + sig(-3), 5 + sig(0) + sig(0.1)};
  std::vector<int> order = {0, 1, 2, 3};
  std::sort(order.begin(), order.end(), [&](int a, int c) { return group[a] > group[c]; });
  std::vector<std::pair<double, int>> candidates;
  for (int g : {order[0], order[1]})
    for (int e : {2 * g, 2 * g + 1}) candidates.push_back({sig(l[e]) + b[e], e});
  std::sort(candidates.rbegin(), candidates.rend());
  int e0 = candidates[0].second, e1 = candidates[1].second;
  EXPECT_EQ(ids.as<int32_t>()[0], e0);
  EXPECT_EQ(ids.as<int32_t>()[1], e1);
  double sum = sig(l[e0]) + sig(l[e1]);
  EXPECT_NEAR(weights.as<float>()[0], 2.5 * sig(l[e0]) / sum, 1e-6);
  EXPECT_NEAR(weights.as<float>()[1], 2.5 * sig(l[e1]) / sum, 1e-6);
}

TEST_F(CpuOpsTest, RouterSoftmaxGreedyScales) {
  Tensor logits = Random({5, 6}), ids = Make({5, 3}, DType::kI32), weights = Make({5, 3});
  RouterConfig config{.top_k = 3, .scaling = 16.0f};
  ASSERT_TRUE(ops_->MoeRoute(logits, nullptr, config, &ids, &weights).ok());
  for (int t = 0; t < 5; ++t) {
    const float* l = logits.as<float>() + t * 6;
    double mx = *std::max_element(l, l + 6), z = 0;
    for (int e = 0; e < 6; ++e) z += std::exp(l[e] - mx);
    std::vector<int> order = {0, 1, 2, 3, 4, 5};
    std::sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
    for (int k = 0; k < 3; ++k) {
      EXPECT_EQ(ids.as<int32_t>()[t * 3 + k], order[k]);
      EXPECT_NEAR(weights.as<float>()[t * 3 + k], 16.0 * std::exp(l[order[k]] - mx) / z, 1e-5);
    }
  }
}

TEST_F(CpuOpsTest, MoeExpertsSumWeightedExpertOutputsAndShardsAddUp) {
  const int64_t tokens = 4, d = 6, inner = 3, experts = 4, top_k = 2;
  Tensor x = Random({tokens, d}), gate_up = Random({experts, 2 * inner, d}), down = Random({experts, d, inner});
  Tensor ids = Make({tokens, top_k}, DType::kI32), weights = Random({tokens, top_k});
  std::vector<int32_t> chosen = {0, 3, 1, 2, 3, 2, 0, 1};
  std::copy(chosen.begin(), chosen.end(), ids.as<int32_t>());
  Tensor out = Make({tokens, d});
  ASSERT_TRUE(ops_->MoeExperts(x, ids, weights, gate_up, down, 0, &out).ok());
  std::vector<double> ref(tokens * d);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t k = 0; k < top_k; ++k) {
      const int64_t e = chosen[t * top_k + k];
      std::vector<double> act(inner);
      for (int64_t i = 0; i < inner; ++i) {
        double g = 0, u = 0;
        for (int64_t j = 0; j < d; ++j) {
          g += gate_up.as<float>()[(e * 2 * inner + i) * d + j] * x.as<float>()[t * d + j];
          u += gate_up.as<float>()[(e * 2 * inner + inner + i) * d + j] * x.as<float>()[t * d + j];
        }
        act[i] = g / (1 + std::exp(-g)) * u;
      }
      for (int64_t j = 0; j < d; ++j) {
        double y = 0;
        for (int64_t i = 0; i < inner; ++i) y += down.as<float>()[(e * d + j) * inner + i] * act[i];
        ref[t * d + j] += weights.as<float>()[t * top_k + k] * y;
      }
    }
  EXPECT_LT(RelErr(out, ref), 1e-6);
  // Two shards of two experts each add up to the whole.
  Tensor lo = Make({tokens, d}), hi = Make({tokens, d});
  ASSERT_TRUE(ops_->MoeExperts(x, ids, weights, SliceRows(gate_up, 0, 2), SliceRows(down, 0, 2), 0, &lo).ok());
  ASSERT_TRUE(ops_->MoeExperts(x, ids, weights, SliceRows(gate_up, 2, 2), SliceRows(down, 2, 2), 2, &hi).ok());
  ASSERT_TRUE(ops_->Add(&lo, hi).ok());
  EXPECT_LT(RelErr(lo, ref), 1e-6);
}

}  // namespace
}  // namespace mlaserve
