// Token sampling on the GPU by the rule of kernels/sampler.h, one thread
// block per row, so a row's token never depends on the other rows of its
// batch. Top-k and top-p cuts are found without sorting: a radix select over
// the logits' ordered bit patterns (by count for top-k, by probability mass
// for top-p) finds the cut's logit, and ties at the cut are taken in id
// order, as the reference ranks them. Every sum is reduced in a fixed order,
// so a row samples the same token on every run.
// kernels/cuda/cuda_ops.cc checks the arguments and calls this.
#ifndef MLASERVE_KERNELS_CUDA_SAMPLING_H_
#define MLASERVE_KERNELS_CUDA_SAMPLING_H_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mlaserve::cuda {

// One row's sampling parameters (kernels/sampler.h's SamplerParams plus its draw index).
struct SampleRow {
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  uint64_t sample_index = 0;
};

// logits [shards, rows, shard_vocab]; token v of row r at [v / shard_vocab, r, v % shard_vocab].
struct LogitsLayout {
  int64_t shards = 1;
  int64_t rows = 0;
  int64_t shard_vocab = 0;
  int64_t vocab = 0;  // valid tokens; columns past it are padding
};

// tokens[r] for every row r, with params[r] (both device arrays of `rows`).
cudaError_t SampleTokens(const float* logits, const LogitsLayout& layout, const SampleRow* params, int32_t* tokens,
                         cudaStream_t stream);
cudaError_t SampleTokens(const __nv_bfloat16* logits, const LogitsLayout& layout, const SampleRow* params,
                         int32_t* tokens, cudaStream_t stream);

}  // namespace mlaserve::cuda

#endif  // MLASERVE_KERNELS_CUDA_SAMPLING_H_
