#include "kernels/cuda/sampling.h"

#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/rank_order.h"
#include "kernels/random_normal.h"

namespace mlaserve::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kDigitBits = 4;  // radix-16 select: 8 walks over the row per cut
constexpr int kDigits = 1 << kDigitBits;

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

// Larger logits map to larger keys; NaN maps to 0, below every kept key.
__device__ __forceinline__ uint32_t OrderedKey(float x) {
  if (isnan(x)) return 0;
  const uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float KeyValue(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// One row of logits [shards, rows, shard_vocab], addressed by token id.
template <typename T>
struct RowLogits {
  const T* row;          // logits + r * shard_vocab
  int64_t shard_stride;  // rows * shard_vocab
  int64_t shard_vocab;
  __device__ float operator()(int64_t v) const {
    const int64_t shard = v / shard_vocab;
    return ToFloat(row[shard * shard_stride + (v - shard * shard_vocab)]);
  }
};

// The kept tokens: those whose key is above `key`, and the first `take` in
// id order of those whose key equals it.
struct Cut {
  uint32_t key = 1;  // every logit but NaN
  long long take = LLONG_MAX;
};

struct Shared {
  double partial[kWarps][kDigits];
  double digit_sum[kDigits];
  double thread_value[kThreads];
  double total;
  float best_value[kWarps];
  int64_t best_id[kWarps];
  int chosen_thread;
  double chosen_target;
};

// Each thread walks its own contiguous range of ids, [begin, end), so that
// per-thread results in thread order are results in id order.
struct Range {
  int64_t begin;
  int64_t end;
};

// Calls f(id, logit, key) for the kept tokens of the thread's range, in id
// order; `tie_base` is the rank among the cut's ties of the range's first.
template <typename T, typename F>
__device__ void ForKept(const RowLogits<T>& logits, Range range, const Cut& cut, long long tie_base, F&& f) {
  long long rank = tie_base;
  for (int64_t v = range.begin; v < range.end; ++v) {
    const float x = logits(v);
    const uint32_t key = OrderedKey(x);
    if (key < cut.key) continue;
    if (key == cut.key && rank++ >= cut.take) continue;
    f(v, x, key);
  }
}

// The sum of the values of the threads before this one, and the total.
// Thread 0 adds them up in thread order: deterministic, and 512 additions
// are cheap next to a walk over the row.
__device__ double ExclusiveSum(double value, Shared& s, double* total) {
  s.thread_value[threadIdx.x] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    double running = 0.0;
    for (int t = 0; t < kThreads; ++t) {
      const double v = s.thread_value[t];
      s.thread_value[t] = running;
      running += v;
    }
    s.total = running;
  }
  __syncthreads();
  const double before = s.thread_value[threadIdx.x];
  if (total != nullptr) *total = s.total;
  __syncthreads();
  return before;
}

// s.digit_sum[d] = the block's sum of hist[d], reduced in a fixed order.
__device__ void BlockSumDigits(const double (&hist)[kDigits], Shared& s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int d = 0; d < kDigits; ++d) {
    double v = hist[d];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    if (lane == 0) s.partial[warp][d] = v;
  }
  __syncthreads();
  if (threadIdx.x < kDigits) {
    double sum = 0.0;
    for (int w = 0; w < kWarps; ++w) sum += s.partial[w][threadIdx.x];
    s.digit_sum[threadIdx.x] = sum;
  }
  __syncthreads();
}

// The block's best (logit, id) by Better, in every thread.
template <typename T>
__device__ void BlockArgMax(const RowLogits<T>& logits, Range range, Shared& s, float* best, int64_t* best_id) {
  float value = -INFINITY;
  int64_t id = LLONG_MAX;
  for (int64_t v = range.begin; v < range.end; ++v) {
    const float x = logits(v);
    if (Better(x, v, value, id)) value = x, id = v;
  }
  WarpArgMax(value, id);
  if (threadIdx.x % 32 == 0) s.best_value[threadIdx.x / 32] = value, s.best_id[threadIdx.x / 32] = id;
  __syncthreads();
  value = s.best_value[0], id = s.best_id[0];
  for (int w = 1; w < kWarps; ++w) {
    if (Better(s.best_value[w], s.best_id[w], value, id)) value = s.best_value[w], id = s.best_id[w];
  }
  *best = value, *best_id = id;
  __syncthreads();
}

// The rank among the ties at `key` of the first tie in this thread's range.
template <typename T>
__device__ long long TieBase(const RowLogits<T>& logits, Range range, uint32_t key, Shared& s) {
  double ties = 0.0;
  for (int64_t v = range.begin; v < range.end; ++v) ties += OrderedKey(logits(v)) == key ? 1.0 : 0.0;
  return static_cast<long long>(ExclusiveSum(ties, s, nullptr));
}

// The cut keeping, of the tokens `kept` keeps, the fewest in rank order
// whose summed weight reaches `target`: radix select on the keys, one digit
// per walk, then enough of the ties at the cut's key.
template <typename T, typename Weight>
__device__ Cut SelectCut(const RowLogits<T>& logits, Range range, const Cut& kept, long long tie_base, double target,
                         Weight weight, Shared& s) {
  uint32_t prefix = 0, mask = 0;
  double remaining = target;  // weight still wanted at and below the digits chosen so far
  for (int shift = 32 - kDigitBits; shift >= 0; shift -= kDigitBits) {
    double hist[kDigits] = {};
    ForKept(logits, range, kept, tie_base, [&](int64_t, float x, uint32_t key) {
      if ((key & mask) == prefix) hist[(key >> shift) & (kDigits - 1)] += weight(x);
    });
    BlockSumDigits(hist, s);
    int digit = -1, lowest = 0;
    double above = 0.0, above_lowest = 0.0;
    for (int d = kDigits - 1; d >= 0; --d) {
      const double bucket = s.digit_sum[d];
      if (bucket > 0.0) {
        lowest = d, above_lowest = above;
        if (above + bucket >= remaining) {
          digit = d;
          break;
        }
      }
      above += bucket;
    }
    if (digit < 0) digit = lowest, above = above_lowest;  // rounding left the target past the last bucket
    remaining -= above;
    prefix |= static_cast<uint32_t>(digit) << shift;
    mask |= static_cast<uint32_t>(kDigits - 1) << shift;
    __syncthreads();  // digit_sum is rewritten by the next walk
  }
  Cut cut;
  cut.key = prefix;
  const double ties = fmin(ceil(remaining / weight(KeyValue(prefix))), 1e18);
  cut.take = ties < 1.0 ? 1 : static_cast<long long>(ties);
  if (cut.key == kept.key && kept.take < cut.take) cut.take = kept.take;
  return cut;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    SampleKernel(const T* logits_base, const LogitsLayout layout, const SampleRow* params, int32_t* tokens) {
  __shared__ Shared s;
  const int64_t r = blockIdx.x, vocab = layout.vocab;
  const SampleRow p = params[r];
  const RowLogits<T> logits{logits_base + r * layout.shard_vocab, layout.rows * layout.shard_vocab,
                            layout.shard_vocab};
  const int64_t per_thread = (vocab + kThreads - 1) / kThreads;
  const int64_t begin = min(vocab, static_cast<int64_t>(threadIdx.x) * per_thread);
  const Range range{begin, min(vocab, begin + per_thread)};

  float max_logit = 0.0f;
  int64_t best_id = 0;
  BlockArgMax(logits, range, s, &max_logit, &best_id);
  if (p.temperature <= 0.0f || p.top_k == 1) {
    if (threadIdx.x == 0) tokens[r] = static_cast<int32_t>(best_id);
    return;
  }
  const double max_value = max_logit, temperature = p.temperature;
  auto mass = [=](float x) { return exp((static_cast<double>(x) - max_value) / temperature); };

  Cut cut;
  long long tie_base = 0;
  if (p.top_k > 0 && p.top_k < vocab) {
    cut = SelectCut(logits, range, cut, tie_base, static_cast<double>(p.top_k), [](float) { return 1.0; }, s);
    tie_base = TieBase(logits, range, cut.key, s);
  }
  if (p.top_p > 0.0f && p.top_p < 1.0f) {
    double own = 0.0, total = 0.0;
    ForKept(logits, range, cut, tie_base, [&](int64_t, float x, uint32_t) { own += mass(x); });
    ExclusiveSum(own, s, &total);
    cut = SelectCut(logits, range, cut, tie_base, static_cast<double>(p.top_p) * total, mass, s);
    tie_base = TieBase(logits, range, cut.key, s);
  }

  // The draw: the thread whose range holds u * kept mass walks it.
  double own = 0.0;
  int64_t last_kept = -1;
  ForKept(logits, range, cut, tie_base, [&](int64_t v, float x, uint32_t) { own += mass(x), last_kept = v; });
  s.thread_value[threadIdx.x] = own;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int t = 0; t < kThreads; ++t) total += s.thread_value[t];
    const double target = RandomUniform(p.seed, p.sample_index) * total;
    double base = 0.0;
    s.chosen_thread = -1;
    for (int t = 0; t < kThreads; ++t) {
      if (s.thread_value[t] > 0.0 && base <= target) s.chosen_thread = t, s.chosen_target = target - base;
      base += s.thread_value[t];
    }
    if (s.chosen_thread < 0) tokens[r] = static_cast<int32_t>(best_id);  // only NaN logits
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) != s.chosen_thread) return;
  double remaining = s.chosen_target;
  int64_t token = last_kept;
  bool found = false;
  ForKept(logits, range, cut, tie_base, [&](int64_t v, float x, uint32_t) {
    if (found) return;
    remaining -= mass(x);
    if (remaining < 0.0) token = v, found = true;
  });
  tokens[r] = static_cast<int32_t>(token);
}

template <typename T>
cudaError_t Launch(const T* logits, const LogitsLayout& layout, const SampleRow* params, int32_t* tokens,
                   cudaStream_t stream) {
  if (layout.rows == 0) return cudaSuccess;
  SampleKernel<T><<<static_cast<unsigned>(layout.rows), kThreads, 0, stream>>>(logits, layout, params, tokens);
  return cudaGetLastError();
}

}  // namespace

cudaError_t SampleTokens(const float* logits, const LogitsLayout& layout, const SampleRow* params, int32_t* tokens,
                         cudaStream_t stream) {
  return Launch(logits, layout, params, tokens, stream);
}

cudaError_t SampleTokens(const __nv_bfloat16* logits, const LogitsLayout& layout, const SampleRow* params,
                         int32_t* tokens, cudaStream_t stream) {
  return Launch(logits, layout, params, tokens, stream);
}

}  // namespace mlaserve::cuda
