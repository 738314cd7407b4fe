// bf16 GEMMs on cuBLASLt that keep batch invariance, for the CUDA backend's
// Linear and HeadLinear ops. cuBLAS guarantees only run-to-run
// reproducibility for the same problem (same shapes, toolkit, architecture,
// SM count; one stream or CUBLAS_WORKSPACE_CONFIG) -- not that a row's result
// is the same when the number of rows changes, since its heuristics pick
// other kernels (and split-K / stream-K reductions) for other sizes. So this
// picks one algorithm per weight shape (queried at a fixed reference row
// count), forbids split-K reductions and workspace, and reuses that
// algorithm for every row count it accepts: each output element is then one
// dot product in the kernel's fixed K order, whatever the batch. Shapes the
// chosen algorithm rejects fall back to a per-size choice, then to
// cublasGemmStridedBatchedEx. Owns its cuBLAS handles; runs on one stream;
// not thread-safe.
#ifndef MLASERVE_KERNELS_CUDA_GEMM_H_
#define MLASERVE_KERNELS_CUDA_GEMM_H_

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <tuple>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mlaserve {

// Lowest power of two (at most 256) dividing the address and the batch stride.
uint32_t Alignment(const void* ptr, int64_t stride_bytes);

// One column-major GEMM (batched with strides when batch > 1):
// C[m, n] = A^T B with A stored k x m (lda), B stored k x n (ldb), C m x n (ldc),
// A and B bf16, C bf16 or float32, float32 accumulation. A row-major
// out[T, N] = x[T, K] w[N, K]^T is m = N, n = T, k = K, A = w, B = x.
struct GemmShape {
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  int64_t batch = 1;
  cudaDataType_t c_type = CUDA_R_16BF;
  uint32_t align_a = 256, align_b = 256, align_c = 256;
  auto Tie() const {
    return std::tie(m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c, batch, c_type, align_a, align_b, align_c);
  }
  bool operator<(const GemmShape& other) const { return Tie() < other.Tie(); }
};

class BatchInvariantGemm {
 public:
  static absl::StatusOr<std::unique_ptr<BatchInvariantGemm>> Create(cudaStream_t stream);
  ~BatchInvariantGemm();
  BatchInvariantGemm(const BatchInvariantGemm&) = delete;
  BatchInvariantGemm& operator=(const BatchInvariantGemm&) = delete;

  // C = A^T B as `s` describes, queued on the stream.
  absl::Status Run(const GemmShape& s, const void* a, const void* b, void* c);

 private:
  struct Plan;
  explicit BatchInvariantGemm(cudaStream_t stream);
  absl::StatusOr<std::optional<cublasLtMatmulAlgo_t>> Heuristic(const GemmShape& s);
  absl::StatusOr<const Plan*> PlanFor(const GemmShape& s);

  cudaStream_t stream_;
  cublasLtHandle_t lt_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::map<GemmShape, std::unique_ptr<Plan>> plans_;
  std::map<GemmShape, std::optional<cublasLtMatmulAlgo_t>> reference_algos_;
};

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_CUDA_GEMM_H_
