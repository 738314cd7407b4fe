// Error checks for the CUDA benchmark binaries: a failed call prints where and
// exits, since a benchmark has no caller to hand a status to.
#ifndef MLASERVE_KERNELS_CUDA_BENCH_CHECKS_H_
#define MLASERVE_KERNELS_CUDA_BENCH_CHECKS_H_

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CK(expr)                                                                                        \
  do {                                                                                                  \
    cudaError_t e_ = (expr);                                                                            \
    if (e_ != cudaSuccess) {                                                                            \
      fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, #expr); \
      exit(1);                                                                                          \
    }                                                                                                   \
  } while (0)

#endif  // MLASERVE_KERNELS_CUDA_BENCH_CHECKS_H_
