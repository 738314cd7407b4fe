// Moving whole blocks of a paged latent KV pool (worker/kv_cache.h): in and
// out of host memory as float32 values of [num_layers, block_size,
// row width] per block, which cross TCP in the pool's own element type
// (EncodeBlockValues), or straight between pools over a communicator (NCCL
// between GPUs, Gloo between CPUs). The worker's side of KV transfers.
#ifndef MLASERVE_WORKER_BLOCK_IO_H_
#define MLASERVE_WORKER_BLOCK_IO_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/ops.h"
#include "worker/comm/communicator.h"

namespace mlaserve {

// Values of one block of `pool` [num_blocks, ...].
int64_t ValuesPerBlock(const Tensor& pool);

// Appends the values of `blocks`, in order, to `out`.
absl::Status ReadBlocks(Ops& ops, const Tensor& pool, absl::Span<const int32_t> blocks, std::vector<float>* out);

// Writes `values` (ValuesPerBlock each, in order) into `blocks`.
absl::Status WriteBlocks(Ops& ops, Tensor& pool, absl::Span<const int32_t> blocks, absl::Span<const float> values);

// `values` in `dtype` (F32, BF16, or U8 for an FP8 cache's bytes) as bytes,
// exactly: block values read from a pool of that type fit it.
// REQUIRES: dtype is F32, BF16 or U8.
std::string EncodeBlockValues(absl::Span<const float> values, DType dtype);
// The float32 values of `bytes` in element type `dtype_name`, for a pool of
// `pool_dtype`: InvalidArgument for another type than F32, BF16 or U8, for
// bytes that are not whole values, or for FP8 bytes into a pool of values or
// back (two caches of different kinds).
absl::StatusOr<std::vector<float>> DecodeBlockValues(std::string_view bytes, std::string_view dtype_name,
                                                     DType pool_dtype);

// Sends `blocks` of `pool` to `peer` of `link`, which receives them with
// RecvBlocks in the same order; each block is one contiguous message.
absl::Status SendBlocks(Communicator& link, const Tensor& pool, absl::Span<const int32_t> blocks, int peer);
absl::Status RecvBlocks(Communicator& link, Tensor& pool, absl::Span<const int32_t> blocks, int peer);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_BLOCK_IO_H_
