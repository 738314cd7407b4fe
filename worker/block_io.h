// Moving whole blocks of a paged latent KV pool (worker/kv_cache.h): in and
// out of host memory as float32 values of [num_layers, block_size,
// latent_dim] per block (transfers over TCP), or straight between pools over
// a communicator (NCCL between GPUs). The worker's side of KV transfers.
#ifndef MLASERVE_WORKER_BLOCK_IO_H_
#define MLASERVE_WORKER_BLOCK_IO_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
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

// Sends `blocks` of `pool` to `peer` of `link`, which receives them with
// RecvBlocks in the same order; each block is one contiguous message.
absl::Status SendBlocks(Communicator& link, const Tensor& pool, absl::Span<const int32_t> blocks, int peer);
absl::Status RecvBlocks(Communicator& link, Tensor& pool, absl::Span<const int32_t> blocks, int peer);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_BLOCK_IO_H_
