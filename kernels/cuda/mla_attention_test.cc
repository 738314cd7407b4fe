// MLA attention on the GPU (kernels/cuda/mla_attention) against the float32
// CPU reference (kernels/cpu), on fresh random inputs (seeds printed): decode
// batches of mixed lengths, block sizes 64/16/1, mixed decode and prefill
// chunks with cached prefixes, 128 and 16 heads at DeepSeek-V3 dims, a 64K
// context, generic dims, the expanded form; batch invariance (bitwise) and
// determinism. Outputs are poisoned with NaN before every run.
#include "kernels/cuda/mla_attention.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cuda/mla/kernels.h"
#include "kernels/latent_row.h"
#include "kernels/ops.h"

namespace mlaserve {
namespace {

uint64_t FreshSeed() {
  const uint64_t seed = (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
  return seed;
}

// A bf16 CUDA tensor holding `host` rounded to bf16 (host is rounded in place,
// so that the reference sees exactly the values the GPU does).
Tensor DeviceBf16(std::vector<float>& host, std::vector<int64_t> shape) {
  Tensor t;
  t.dtype = DType::kBF16;
  t.device = Device::kCuda;
  t.shape = std::move(shape);
  EXPECT_EQ(static_cast<size_t>(t.numel()), host.size());
  std::vector<uint16_t> bits(host.size());
  for (size_t i = 0; i < host.size(); ++i) {
    bits[i] = F32ToBf16(host[i]);
    host[i] = Bf16ToF32(bits[i]);
  }
  void* ptr = nullptr;
  EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(bits.size() * 2, 2)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(ptr, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  t.storage = std::shared_ptr<void>(ptr, [](void* p) { cudaFree(p); });
  t.data = ptr;
  return t;
}

// A bf16 CUDA tensor full of NaN.
Tensor PoisonedBf16(std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> nan(n, NAN);
  return DeviceBf16(nan, std::move(shape));
}

std::vector<uint16_t> Bits(const Tensor& t) {
  std::vector<uint16_t> bits(t.numel());
  EXPECT_EQ(cudaMemcpy(bits.data(), t.data, bits.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  return bits;
}

std::vector<float> ToHost(const Tensor& t) {
  std::vector<uint16_t> bits = Bits(t);
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = Bf16ToF32(bits[i]);
  return out;
}

std::vector<float> Random(size_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

Ops& Cpu() {
  static Ops* ops = NewCpuOps().release();
  return *ops;
}

Tensor CpuTensor(const std::vector<float>& host, std::vector<int64_t> shape) {
  Tensor t = *Cpu().Empty(DType::kF32, std::move(shape));
  EXPECT_TRUE(Cpu().Upload(host, &t).ok());
  return t;
}

// ||out - ref|| / ||ref||; infinite when anything is not finite.
double RelErr(const std::vector<float>& out, const std::vector<float>& ref) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    diff += (out[i] - ref[i]) * double(out[i] - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-30));
}

const float kV3Scale = 1.0f / std::sqrt(192.0f);

class CudaMlaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) GTEST_SKIP() << "no CUDA device";
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
    attention_ = std::make_unique<MlaAttention>(stream_);
  }
  void TearDown() override {
    attention_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<MlaAttention> attention_;
};

// ---------------------------------------------------------------- absorbed

struct SeqSpec {
  int64_t num_tokens;
  int64_t context_len;
};

// A CUDA tensor of `bytes` (an FP8 cache's).
Tensor DeviceBytes(const Tensor& host) {
  Tensor t = host;
  t.device = Device::kCuda;
  void* ptr = nullptr;
  EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(host.num_bytes(), 1)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(ptr, host.data, host.num_bytes(), cudaMemcpyHostToDevice), cudaSuccess);
  t.storage = std::shared_ptr<void>(ptr, [](void* p) { cudaFree(p); });
  t.data = ptr;
  return t;
}

// A batch for the absorbed form: the latent cache (two layers, layer 1 used),
// queries and the layout, on the host (float, bf16-rounded) and on the GPU.
// With `fp8`, the cache is the CPU's FP8 cache of those rows (kernels/latent_row.h),
// the same bytes on both.
struct AbsorbedProblem {
  int64_t heads = 0, rank = 0, rope = 0, block_size = 0, layers = 2, layer = 1, num_blocks = 0;
  float scale = kV3Scale;
  AttentionLayout layout;
  std::vector<float> q_latent, q_rope, cache;
  Tensor fp8_cache;  // on the host; undefined for a bf16 cache
  Tensor d_q_latent, d_q_rope, d_cache;

  static AbsorbedProblem Make(int64_t heads, int64_t rank, int64_t rope, int64_t block_size,
                              const std::vector<SeqSpec>& seqs, uint64_t seed, bool fp8 = false) {
    std::mt19937_64 rng(seed);
    AbsorbedProblem p;
    p.heads = heads;
    p.rank = rank;
    p.rope = rope;
    p.block_size = block_size;
    p.layout.block_size = block_size;
    int64_t blocks = 0, tokens = 0;
    for (const SeqSpec& s : seqs) blocks += (s.context_len + block_size - 1) / block_size;
    p.num_blocks = blocks + 3;  // a few blocks nobody uses
    std::vector<int32_t> ids(p.num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    int64_t next = 0;
    for (const SeqSpec& s : seqs) {
      SequenceSlice slice;
      slice.token_begin = tokens;
      slice.num_tokens = s.num_tokens;
      slice.context_len = s.context_len;
      const int64_t n = (s.context_len + block_size - 1) / block_size;
      slice.block_table.assign(ids.begin() + next, ids.begin() + next + n);
      next += n;
      tokens += s.num_tokens;
      p.layout.seqs.push_back(std::move(slice));
    }
    p.q_latent = Random(tokens * heads * rank, rng);
    p.q_rope = Random(tokens * heads * rope, rng);
    p.cache = Random(p.num_blocks * p.layers * block_size * (rank + rope), rng);
    p.d_q_latent = DeviceBf16(p.q_latent, {tokens, heads, rank});
    p.d_q_rope = DeviceBf16(p.q_rope, {tokens, heads, rope});
    p.d_cache = DeviceBf16(p.cache, {p.num_blocks, p.layers, block_size, rank + rope});
    if (fp8) {
      p.fp8_cache = *Cpu().Empty(DType::kU8, {p.num_blocks, p.layers, block_size, Fp8LatentRow{rank, rope}.bytes()});
      const int64_t slots = p.num_blocks * block_size;
      std::vector<int64_t> slot_ids(slots);
      std::iota(slot_ids.begin(), slot_ids.end(), 0);
      for (int64_t l = 0; l < p.layers; ++l) {
        std::vector<float> c_kv, k_rope;
        for (int64_t slot = 0; slot < slots; ++slot) {
          const float* row = p.cache.data() + ((slot / block_size * p.layers + l) * block_size + slot % block_size) *
                                                  (rank + rope);
          c_kv.insert(c_kv.end(), row, row + rank);
          k_rope.insert(k_rope.end(), row + rank, row + rank + rope);
        }
        EXPECT_TRUE(Cpu().WriteLatentCache(CpuTensor(c_kv, {slots, rank}), CpuTensor(k_rope, {slots, rope}), slot_ids,
                                           l, &p.fp8_cache)
                        .ok());
      }
      p.d_cache = DeviceBytes(p.fp8_cache);
    }
    return p;
  }

  // The same cache with only sequence `i` in the batch (its queries copied).
  AbsorbedProblem Only(size_t i) const {
    AbsorbedProblem p = *this;
    const SequenceSlice& s = layout.seqs[i];
    p.layout.seqs = {s};
    p.layout.seqs[0].token_begin = 0;
    const int64_t rows = s.num_tokens * heads;
    p.q_latent.assign(q_latent.begin() + s.token_begin * heads * rank,
                      q_latent.begin() + (s.token_begin * heads + rows) * rank);
    p.q_rope.assign(q_rope.begin() + s.token_begin * heads * rope,
                    q_rope.begin() + (s.token_begin * heads + rows) * rope);
    p.d_q_latent = DeviceBf16(p.q_latent, {s.num_tokens, heads, rank});
    p.d_q_rope = DeviceBf16(p.q_rope, {s.num_tokens, heads, rope});
    return p;
  }

  int64_t tokens() const { return layout.num_tokens(); }

  std::vector<float> Reference() const {
    Tensor ql = CpuTensor(q_latent, {tokens(), heads, rank});
    Tensor qr = CpuTensor(q_rope, {tokens(), heads, rope});
    Tensor c = fp8_cache.data != nullptr ? fp8_cache
                                                            : CpuTensor(cache, {num_blocks, layers, block_size, rank + rope});
    Tensor out = *Cpu().Empty(DType::kF32, {tokens(), heads, rank});
    absl::Status st = Cpu().MlaAbsorbedAttention(ql, qr, c, layer, layout, scale, &out);
    EXPECT_TRUE(st.ok()) << st;
    return std::vector<float>(out.as<float>(), out.as<float>() + out.numel());
  }

  // Runs on the GPU into a NaN-poisoned output; returns it (bf16 tensor).
  Tensor Run(MlaAttention& attention, cudaStream_t stream) const {
    Tensor out = PoisonedBf16({tokens(), heads, rank});
    absl::Status st = attention.Absorbed(d_q_latent, d_q_rope, d_cache, layer, layout, scale, &out);
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    return out;
  }
};

std::string Describe(const std::vector<SeqSpec>& seqs) {
  std::string s;
  for (const SeqSpec& q : seqs) s += "(" + std::to_string(q.num_tokens) + "," + std::to_string(q.context_len) + ")";
  return s;
}

// GPU against CPU; returns the largest relative error.
double CheckAbsorbed(MlaAttention& attention, cudaStream_t stream, int64_t heads, int64_t rank, int64_t rope,
                     int64_t block_size, const std::vector<SeqSpec>& seqs, bool fp8 = false) {
  const uint64_t seed = FreshSeed();
  AbsorbedProblem p = AbsorbedProblem::Make(heads, rank, rope, block_size, seqs, seed, fp8);
  const std::vector<float> ref = p.Reference();
  const std::vector<float> gpu = ToHost(p.Run(attention, stream));
  const double err = RelErr(gpu, ref);
  printf("absorbed%s heads=%lld rank=%lld rope=%lld block=%lld seqs=%s seed=%llu: rel err %.3e\n",
         fp8 ? " (FP8 cache)" : "", (long long)heads, (long long)rank, (long long)rope, (long long)block_size,
         Describe(seqs).substr(0, 120).c_str(), (unsigned long long)seed, err);
  fflush(stdout);
  EXPECT_LT(err, 1e-2) << "seed " << seed << " seqs " << Describe(seqs);
  // Every row, separately: an unwritten or wrong row would hide in the batch norm.
  const int64_t width = heads * rank;
  for (const SequenceSlice& s : p.layout.seqs) {
    for (int64_t i = 0; i < s.num_tokens; ++i) {
      const int64_t t = s.token_begin + i;
      std::vector<float> g(gpu.begin() + t * width, gpu.begin() + (t + 1) * width);
      std::vector<float> r(ref.begin() + t * width, ref.begin() + (t + 1) * width);
      const double row_err = RelErr(g, r);
      if (!(row_err < 2e-2)) {
        ADD_FAILURE() << "token " << t << " (context " << s.context_len << ", " << s.num_tokens
                      << " tokens): rel err " << row_err << ", seed " << seed;
        return INFINITY;
      }
    }
  }
  return err;
}

// More work items than SMs: persistent CTAs loop over several items each.
std::vector<SeqSpec> ManySeqs(uint64_t seed, int n) {
  std::mt19937_64 rng(seed);
  std::vector<SeqSpec> seqs;
  for (int i = 0; i < n; ++i) {
    const int64_t ctx = std::uniform_int_distribution<int64_t>(1, 4000)(rng);
    const int64_t tokens = i % 7 == 3 ? std::min<int64_t>(ctx, 1 + i % 5) : 1;
    seqs.push_back({tokens, ctx});
  }
  return seqs;
}

const std::vector<SeqSpec> kMixedDecode = {{1, 1},   {1, 63},  {1, 64},  {1, 65},   {1, 1000},
                                           {1, 777}, {1, 511}, {1, 513}, {1, 2049}, {1, 4097}};

TEST_F(CudaMlaTest, DecodeMixedLengths128Heads) { CheckAbsorbed(*attention_, stream_, 128, 512, 64, 64, kMixedDecode); }

TEST_F(CudaMlaTest, DecodeMixedLengths16Heads) {
  CheckAbsorbed(*attention_, stream_, 16, 512, 64, 64, kMixedDecode);
  CheckAbsorbed(*attention_, stream_, 16, 512, 64, 16,
                {{1, 15}, {1, 16}, {1, 17}, {1, 1}, {1, 1023}, {1, 1024}, {1, 1025}, {1, 3001}});
}

TEST_F(CudaMlaTest, BlockSizeOne) {
  CheckAbsorbed(*attention_, stream_, 16, 512, 64, 1, {{1, 1}, {1, 2}, {1, 100}, {1, 700}, {3, 40}});
}

TEST_F(CudaMlaTest, OtherHeadCounts) {
  // 1, 2, 8 heads (16-row tiles, mostly padding), 32 and 40 (64-row tiles, partly padding).
  CheckAbsorbed(*attention_, stream_, 1, 512, 64, 64, {{1, 1500}, {3, 90}, {40, 600}});
  CheckAbsorbed(*attention_, stream_, 8, 512, 64, 64, {{1, 700}, {2, 2}, {5, 530}});
  CheckAbsorbed(*attention_, stream_, 40, 512, 64, 16, {{1, 1100}, {2, 66}, {3, 3}});
}

TEST_F(CudaMlaTest, MixedDecodeAndPrefill16Heads) {
  // Prefill chunks from scratch, chunks after a cached prefix, decode tokens; 2 x 16 rows
  // take 16-row tiles, longer chunks 64-row tiles (4 tokens each, causal inside the tile).
  CheckAbsorbed(*attention_, stream_, 16, 512, 64, 64,
                {{1, 300}, {37, 37}, {20, 700}, {1, 1}, {5, 1030}, {2, 2}, {2, 513}, {70, 1100}});
}

TEST_F(CudaMlaTest, MixedDecodeAndPrefill128Heads) {
  CheckAbsorbed(*attention_, stream_, 128, 512, 64, 16, {{1, 100}, {3, 600}, {9, 9}, {1, 1500}, {2, 515}});
}

TEST_F(CudaMlaTest, LongContext64K) {
  CheckAbsorbed(*attention_, stream_, 16, 512, 64, 64, {{1, 65536}});
  CheckAbsorbed(*attention_, stream_, 2, 512, 64, 64, {{3, 65536}, {1, 40000}});
}

TEST_F(CudaMlaTest, ManySequences128Heads) {
  CheckAbsorbed(*attention_, stream_, 128, 512, 64, 64, ManySeqs(FreshSeed(), 48));
}

TEST_F(CudaMlaTest, ManySequences16Heads) {
  CheckAbsorbed(*attention_, stream_, 16, 512, 64, 16, ManySeqs(FreshSeed(), 96));
}

TEST_F(CudaMlaTest, GenericDims) {
  // The tiny test model (rank 64, rope 16, 8 heads) and odd dims: the generic kernel.
  CheckAbsorbed(*attention_, stream_, 8, 64, 16, 16, {{1, 1}, {1, 17}, {6, 6}, {4, 600}, {1, 1100}});
  CheckAbsorbed(*attention_, stream_, 3, 40, 8, 64, {{2, 70}, {1, 513}});
}

// A sequence's output is bitwise the same alone and in any batch, and the same
// batch gives the same bits twice (also after another layout was planned).
void CheckInvariance(MlaAttention& attention, cudaStream_t stream, int64_t heads, bool fp8 = false) {
  const uint64_t seed = FreshSeed();
  std::vector<SeqSpec> seqs = {{1, 5000}, {1, 70}, {4, 900}, {1, 1}, {1, 2500}, {9, 1300}, {1, 64}};
  for (int i = 0; i < 40; ++i) seqs.push_back({1, 1500 + 37 * i});  // enough items for persistent CTAs to loop
  const AbsorbedProblem batch = AbsorbedProblem::Make(heads, 512, 64, 64, seqs, seed, fp8);
  const AbsorbedProblem other =
      AbsorbedProblem::Make(heads, 512, 64, 64, {{1, 3333}, {9, 1300}, {2, 40}}, seed + 1, fp8);
  std::vector<AbsorbedProblem> alone;
  for (size_t i : {size_t{0}, size_t{2}, size_t{3}, size_t{5}}) alone.push_back(batch.Only(i));
  printf("batch invariance heads=%lld%s seed=%llu\n", (long long)heads, fp8 ? " (FP8 cache)" : "",
         (unsigned long long)seed);
  const std::vector<uint16_t> first = Bits(batch.Run(attention, stream));
  for (const AbsorbedProblem& a : alone) {
    const std::vector<uint16_t> bits = Bits(a.Run(attention, stream));
    const SequenceSlice& s = a.layout.seqs[0];
    const auto it = std::find_if(batch.layout.seqs.begin(), batch.layout.seqs.end(),
                                 [&](const SequenceSlice& b) { return b.block_table == s.block_table; });
    ASSERT_NE(it, batch.layout.seqs.end());
    const int64_t width = heads * 512;
    const bool equal = std::equal(bits.begin(), bits.end(), first.begin() + it->token_begin * width);
    EXPECT_TRUE(equal) << "a sequence of " << s.num_tokens << " tokens, context " << s.context_len
                       << ", differs alone and in the batch, seed " << seed;
  }
  // Another batch planned in between; then the first again: the same bits.
  (void)other.Run(attention, stream);
  const std::vector<uint16_t> again = Bits(batch.Run(attention, stream));
  EXPECT_TRUE(again == first) << "the same batch gave different bits, seed " << seed;
}

TEST_F(CudaMlaTest, BatchInvariance128Heads) { CheckInvariance(*attention_, stream_, 128); }
TEST_F(CudaMlaTest, BatchInvariance16Heads) { CheckInvariance(*attention_, stream_, 16); }

// An FP8 cache: every tile kind (16- and 64-row tiles, the generic kernel), block
// sizes 64/16/1, splits and persistent CTAs looping, against the CPU over the same
// bytes; and bitwise batch invariance.
TEST_F(CudaMlaTest, Fp8CacheMatchesCpu) {
  CheckAbsorbed(*attention_, stream_, 128, 512, 64, 64, kMixedDecode, /*fp8=*/true);
  CheckAbsorbed(*attention_, stream_, 16, 512, 64, 16, {{1, 15}, {1, 17}, {1, 1}, {1, 3001}, {37, 37}, {70, 1100}},
                true);
  CheckAbsorbed(*attention_, stream_, 16, 512, 64, 1, {{1, 1}, {1, 100}, {3, 40}}, true);
  CheckAbsorbed(*attention_, stream_, 128, 512, 64, 16, {{1, 100}, {3, 600}, {9, 9}, {2, 515}}, true);
  CheckAbsorbed(*attention_, stream_, 16, 512, 64, 64, ManySeqs(FreshSeed(), 96), true);
  CheckAbsorbed(*attention_, stream_, 8, 64, 16, 16, {{1, 1}, {1, 17}, {6, 6}, {4, 600}}, true);
  CheckAbsorbed(*attention_, stream_, 2, 512, 64, 64, {{1, 65536}}, true);
}
TEST_F(CudaMlaTest, Fp8CacheBatchInvariance) {
  CheckInvariance(*attention_, stream_, 128, /*fp8=*/true);
  CheckInvariance(*attention_, stream_, 16, /*fp8=*/true);
}

TEST_F(CudaMlaTest, ReusedPlanWithNewQueries) {
  // The second call has the same layout (the plan is reused) but other queries and cache.
  const uint64_t seed = FreshSeed();
  const std::vector<SeqSpec> seqs = {{1, 900}, {1, 3000}, {2, 2}};
  AbsorbedProblem a = AbsorbedProblem::Make(16, 512, 64, 64, seqs, seed);
  AbsorbedProblem b = AbsorbedProblem::Make(16, 512, 64, 64, seqs, seed + 7);
  b.layout = a.layout;  // same blocks, other contents
  const std::vector<float> ga = ToHost(a.Run(*attention_, stream_));
  const std::vector<float> gb = ToHost(b.Run(*attention_, stream_));
  EXPECT_LT(RelErr(ga, a.Reference()), 1e-2) << "seed " << seed;
  EXPECT_LT(RelErr(gb, b.Reference()), 1e-2) << "seed " << seed;
}

TEST_F(CudaMlaTest, RejectsBadArguments) {
  AbsorbedProblem p = AbsorbedProblem::Make(16, 512, 64, 64, {{1, 100}}, 1);
  Tensor out = PoisonedBf16({1, 16, 512});
  // Wrong block size for the cache.
  AttentionLayout bad = p.layout;
  bad.block_size = 16;
  EXPECT_EQ(attention_->Absorbed(p.d_q_latent, p.d_q_rope, p.d_cache, 1, bad, 0.1f, &out).code(),
            absl::StatusCode::kInvalidArgument);
  // A block outside the pool.
  bad = p.layout;
  bad.seqs[0].block_table[1] = static_cast<int32_t>(p.num_blocks);
  EXPECT_EQ(attention_->Absorbed(p.d_q_latent, p.d_q_rope, p.d_cache, 1, bad, 0.1f, &out).code(),
            absl::StatusCode::kOutOfRange);
  // Too few blocks.
  bad = p.layout;
  bad.seqs[0].block_table.resize(1);
  EXPECT_EQ(attention_->Absorbed(p.d_q_latent, p.d_q_rope, p.d_cache, 1, bad, 0.1f, &out).code(),
            absl::StatusCode::kInvalidArgument);
  // Layer outside the cache.
  EXPECT_EQ(attention_->Absorbed(p.d_q_latent, p.d_q_rope, p.d_cache, 2, p.layout, 0.1f, &out).code(),
            absl::StatusCode::kOutOfRange);
  // Wrong dtype.
  Tensor f32 = p.d_q_latent;
  f32.dtype = DType::kF32;
  EXPECT_EQ(attention_->Absorbed(f32, p.d_q_rope, p.d_cache, 1, p.layout, 0.1f, &out).code(),
            absl::StatusCode::kInvalidArgument);
  // A host tensor.
  Tensor host = p.d_q_latent;
  host.device = Device::kCpu;
  EXPECT_EQ(attention_->Absorbed(host, p.d_q_rope, p.d_cache, 1, p.layout, 0.1f, &out).code(),
            absl::StatusCode::kInvalidArgument);
  // And the good call still works after the failures.
  EXPECT_TRUE(attention_->Absorbed(p.d_q_latent, p.d_q_rope, p.d_cache, 1, p.layout, kV3Scale, &out).ok());
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  EXPECT_LT(RelErr(ToHost(out), p.Reference()), 1e-2);
}

// ---------------------------------------------------------------- expanded

// Heads [first_head, first_head + heads) of `q_heads` query heads (all of them when q_heads is 0).
void CheckExpanded(MlaAttention& attention, cudaStream_t stream, int64_t heads, int64_t nope, int64_t rope, int64_t dv,
                   int64_t queries, int64_t keys, int64_t q_heads = 0, int64_t first_head = 0) {
  if (q_heads == 0) q_heads = heads;
  const uint64_t seed = FreshSeed();
  std::mt19937_64 rng(seed);
  std::vector<float> qn = Random(queries * q_heads * nope, rng), qr = Random(queries * q_heads * rope, rng);
  std::vector<float> kn = Random(keys * heads * nope, rng), kr = Random(keys * rope, rng);
  std::vector<float> v = Random(keys * heads * dv, rng);
  Tensor d_qn = DeviceBf16(qn, {queries, q_heads, nope}), d_qr = DeviceBf16(qr, {queries, q_heads, rope});
  Tensor d_kn = DeviceBf16(kn, {keys, heads, nope}), d_kr = DeviceBf16(kr, {keys, rope});
  Tensor d_v = DeviceBf16(v, {keys, heads, dv});
  Tensor out = PoisonedBf16({queries, q_heads, dv});
  const float scale = 1.0f / std::sqrt(static_cast<float>(nope + rope));
  absl::Status st = attention.Expanded(d_qn, d_qr, d_kn, d_kr, d_v, first_head, scale, &out);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  Tensor ref = *Cpu().Empty(DType::kF32, {queries, q_heads, dv});
  std::fill_n(ref.as<float>(), ref.numel(), std::nanf(""));
  ASSERT_TRUE(Cpu()
                  .MlaExpandedAttention(CpuTensor(qn, {queries, q_heads, nope}), CpuTensor(qr, {queries, q_heads, rope}),
                                        CpuTensor(kn, {keys, heads, nope}), CpuTensor(kr, {keys, rope}),
                                        CpuTensor(v, {keys, heads, dv}), first_head, scale, &ref)
                  .ok());
  // The group's heads against the CPU; the others must stay poisoned (NaN on both sides).
  std::vector<float> got = ToHost(out), want(ref.as<float>(), ref.as<float>() + ref.numel());
  std::vector<float> got_group, want_group;
  for (int64_t i = 0; i < queries * q_heads; ++i) {
    const int64_t h = i % q_heads;
    if (h >= first_head && h < first_head + heads) {
      got_group.insert(got_group.end(), got.begin() + i * dv, got.begin() + (i + 1) * dv);
      want_group.insert(want_group.end(), want.begin() + i * dv, want.begin() + (i + 1) * dv);
    } else {
      for (int64_t d = 0; d < dv; ++d) ASSERT_TRUE(std::isnan(got[i * dv + d])) << "head " << h << " was written";
    }
  }
  const double err = RelErr(got_group, want_group);
  printf("expanded heads=%lld of %lld from %lld nope=%lld rope=%lld dv=%lld queries=%lld keys=%lld seed=%llu: "
         "rel err %.3e\n",
         (long long)heads, (long long)q_heads, (long long)first_head, (long long)nope, (long long)rope,
         (long long)dv, (long long)queries, (long long)keys, (unsigned long long)seed, err);
  fflush(stdout);
  EXPECT_LT(err, 1e-2) << "seed " << seed;
}

TEST_F(CudaMlaTest, ExpandedV3Dims) {
  CheckExpanded(*attention_, stream_, 16, 128, 64, 128, 100, 300);  // chunk after a cached prefix
  CheckExpanded(*attention_, stream_, 8, 128, 64, 128, 200, 200);   // whole prompt
  CheckExpanded(*attention_, stream_, 4, 128, 64, 128, 1, 1000);    // one query
  CheckExpanded(*attention_, stream_, 2, 128, 64, 128, 130, 4100);
  CheckExpanded(*attention_, stream_, 3, 128, 64, 128, 1000, 3001);  // ragged query tiles, longest first
}

// A group of heads, as the model expands K and V for long prefixes: the
// queries carry all heads, the keys and values the group's.
TEST_F(CudaMlaTest, ExpandedGroupOfHeads) {
  CheckExpanded(*attention_, stream_, 4, 128, 64, 128, 100, 700, 16, 12);
  CheckExpanded(*attention_, stream_, 5, 128, 64, 128, 65, 65, 16, 3);
  CheckExpanded(*attention_, stream_, 3, 24, 8, 40, 9, 50, 7, 2);  // generic kernel
}

TEST_F(CudaMlaTest, ExpandedOtherDims) {
  CheckExpanded(*attention_, stream_, 8, 32, 16, 32, 50, 130);  // the tiny test model
  CheckExpanded(*attention_, stream_, 3, 24, 8, 40, 7, 77);     // generic kernel
  CheckExpanded(*attention_, stream_, 2, 20, 12, 16, 300, 300);
}

TEST_F(CudaMlaTest, ExpandedRejectsMoreQueriesThanKeys) {
  std::vector<float> q(3 * 2 * 192), kr(2 * 64), v(2 * 2 * 128);
  Tensor qn = DeviceBf16(q, {3, 2, 192});
  std::vector<float> q2(3 * 2 * 64);
  Tensor qr = DeviceBf16(q2, {3, 2, 64});
  std::vector<float> kn_host(2 * 2 * 192);
  Tensor kn = DeviceBf16(kn_host, {2, 2, 192}), krt = DeviceBf16(kr, {2, 64}), vt = DeviceBf16(v, {2, 2, 128});
  Tensor out = PoisonedBf16({3, 2, 128});
  EXPECT_EQ(attention_->Expanded(qn, qr, kn, krt, vt, 0, 0.1f, &out).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaMlaTest, ExpandedRejectsHeadsOutsideTheQueries) {
  std::vector<float> q(2 * 3 * 128), qr_host(2 * 3 * 64), kn_host(4 * 2 * 128), kr(4 * 64), v(4 * 2 * 128);
  Tensor qn = DeviceBf16(q, {2, 3, 128}), qr = DeviceBf16(qr_host, {2, 3, 64});
  Tensor kn = DeviceBf16(kn_host, {4, 2, 128}), krt = DeviceBf16(kr, {4, 64}), vt = DeviceBf16(v, {4, 2, 128});
  Tensor out = PoisonedBf16({2, 3, 128});
  EXPECT_EQ(attention_->Expanded(qn, qr, kn, krt, vt, 2, 0.1f, &out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(attention_->Expanded(qn, qr, kn, krt, vt, -1, 0.1f, &out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(attention_->Expanded(qn, qr, kn, krt, vt, 1, 0.1f, &out).ok());
}

}  // namespace
}  // namespace mlaserve
