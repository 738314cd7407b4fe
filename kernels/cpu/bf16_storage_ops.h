// The CPU reference with every op's output rounded to bf16, as a backend
// that stores activations, weights and the cache in bf16 (kernels/cuda) does:
// what such a backend computes, up to summation order. Tests compare a GPU
// against it where bf16 rounding, not a kernel, moves results away from the
// float32 reference. Measured on the tiny model (2026-11-23), it reproduces
// the H100's deviation from float32 CPU logits to two digits (1.0e-2, 5.7e-2,
// 5.7e-2 on the three fixture prompts against 1.0e-2, 5.8e-2, 5.9e-2) and the
// GPU's greedy tokens exactly.
#ifndef MLASERVE_KERNELS_CPU_BF16_STORAGE_OPS_H_
#define MLASERVE_KERNELS_CPU_BF16_STORAGE_OPS_H_

#include <memory>

#include "kernels/ops.h"

namespace mlaserve {

std::unique_ptr<Ops> NewBf16StorageCpuOps();

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_CPU_BF16_STORAGE_OPS_H_
