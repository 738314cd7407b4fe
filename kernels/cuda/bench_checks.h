// Error checks for the CUDA benchmark binaries, of CUDA calls (CK) and of
// statuses (OK): a failed call prints where and exits, since a benchmark has no
// caller to hand a status to.
#ifndef MLASERVE_KERNELS_CUDA_BENCH_CHECKS_H_
#define MLASERVE_KERNELS_CUDA_BENCH_CHECKS_H_

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"

#define CK(expr)                                                                                        \
  do {                                                                                                  \
    cudaError_t e_ = (expr);                                                                            \
    if (e_ != cudaSuccess) {                                                                            \
      fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, #expr); \
      exit(1);                                                                                          \
    }                                                                                                   \
  } while (0)

#define OK(expr)                                                                            \
  do {                                                                                      \
    absl::Status s_ = (expr);                                                               \
    if (!s_.ok()) {                                                                         \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, s_.ToString().c_str()); \
      exit(1);                                                                              \
    }                                                                                       \
  } while (0)

#endif  // MLASERVE_KERNELS_CUDA_BENCH_CHECKS_H_
