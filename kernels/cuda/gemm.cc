#include "kernels/cuda/gemm.h"

#include <algorithm>
#include <type_traits>
#include <utility>

#include "common/status_macros.h"
#include "kernels/cuda/cublas_check.h"
#include "kernels/cuda/cuda_check.h"

namespace mlaserve {
namespace {

// cuBLASLt descriptors of one GemmShape.
struct LtDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  LtDescriptors() = default;
  LtDescriptors(const LtDescriptors&) = delete;
  LtDescriptors& operator=(const LtDescriptors&) = delete;
  ~LtDescriptors() {
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
  }
};

absl::Status SetBatch(cublasLtMatrixLayout_t layout, int64_t batch, int64_t stride) {
  const int32_t count = static_cast<int32_t>(batch);
  CUBLAS_RETURN_IF_ERROR(
      cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
  CUBLAS_RETURN_IF_ERROR(
      cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  return absl::OkStatus();
}

absl::Status MakeDescriptors(const GemmShape& s, LtDescriptors* d) {
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&d->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
  CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
  CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&d->a, CUDA_R_16BF, s.k, s.m, s.lda));
  CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&d->b, CUDA_R_16BF, s.k, s.n, s.ldb));
  CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&d->c, s.c_type, s.m, s.n, s.ldc));
  if (s.batch > 1) {
    RETURN_IF_ERROR(SetBatch(d->a, s.batch, s.stride_a));
    RETURN_IF_ERROR(SetBatch(d->b, s.batch, s.stride_b));
    RETURN_IF_ERROR(SetBatch(d->c, s.batch, s.stride_c));
  }
  return absl::OkStatus();
}

// The row count (GEMM n) at which one algorithm per weight shape is chosen.
constexpr int64_t kReferenceRows = 128;

}  // namespace

uint32_t Alignment(const void* ptr, int64_t stride_bytes) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(ptr) | static_cast<uintptr_t>(stride_bytes) | uintptr_t{256};
  return static_cast<uint32_t>(v & (~v + 1));
}

// A GEMM algorithm chosen for a shape: cuBLASLt with `algo`, or (when
// cuBLASLt offers nothing for the shape, e.g. odd leading dimensions)
// cublasGemmStridedBatchedEx.
struct BatchInvariantGemm::Plan {
  bool use_lt = false;
  bool batch_invariant = false;  // the algorithm of the reference row count
  cublasLtMatmulAlgo_t algo{};
  std::unique_ptr<LtDescriptors> descriptors;
};

BatchInvariantGemm::BatchInvariantGemm(cudaStream_t stream) : stream_(stream) {}

absl::StatusOr<std::unique_ptr<BatchInvariantGemm>> BatchInvariantGemm::Create(cudaStream_t stream) {
  std::unique_ptr<BatchInvariantGemm> gemm(new BatchInvariantGemm(stream));
  CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&gemm->lt_));
  CUBLAS_RETURN_IF_ERROR(cublasCreate(&gemm->blas_));
  CUBLAS_RETURN_IF_ERROR(cublasSetStream(gemm->blas_, stream));
  CUBLAS_RETURN_IF_ERROR(
      cublasSetMathMode(gemm->blas_, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                                              CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  return gemm;
}

BatchInvariantGemm::~BatchInvariantGemm() {
  plans_.clear();
  if (lt_ != nullptr) cublasLtDestroy(lt_);
  if (blas_ != nullptr) cublasDestroy(blas_);
}

// The best cuBLASLt algorithm for `s` with no split-K reduction and no
// workspace; nullopt when cuBLASLt has none.
absl::StatusOr<std::optional<cublasLtMatmulAlgo_t>> BatchInvariantGemm::Heuristic(const GemmShape& s) {
  LtDescriptors d;
  RETURN_IF_ERROR(MakeDescriptors(s, &d));
  cublasLtMatmulPreference_t preference = nullptr;
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&preference));
  std::unique_ptr<std::remove_pointer_t<cublasLtMatmulPreference_t>, decltype(&cublasLtMatmulPreferenceDestroy)>
      preference_owner(preference, cublasLtMatmulPreferenceDestroy);
  const uint64_t workspace = 0;
  const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_NONE;
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                              &workspace, sizeof(workspace)));
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction, sizeof(reduction)));
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &s.align_a, sizeof(s.align_a)));
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &s.align_b, sizeof(s.align_b)));
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &s.align_c, sizeof(s.align_c)));
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &s.align_c, sizeof(s.align_c)));
  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(lt_, d.op, d.a, d.b, d.c, d.c, preference, 1, &result, &count);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && count == 0)) {
    return std::optional<cublasLtMatmulAlgo_t>();
  }
  CUBLAS_RETURN_IF_ERROR(status);
  return std::optional<cublasLtMatmulAlgo_t>(result.algo);
}

// The plan of `s`: the algorithm chosen for its weight shape at
// kReferenceRows rows when cuBLASLt accepts it at s.n rows without
// workspace (batch invariance), else the best for s itself, else the
// cublasGemmEx fallback.
absl::StatusOr<const BatchInvariantGemm::Plan*> BatchInvariantGemm::PlanFor(const GemmShape& s) {
  auto it = plans_.find(s);
  if (it != plans_.end()) return it->second.get();
  auto plan = std::make_unique<Plan>();
  plan->descriptors = std::make_unique<LtDescriptors>();
  RETURN_IF_ERROR(MakeDescriptors(s, plan->descriptors.get()));
  // The reference also assumes only 16-byte alignment (what TMA needs), so
  // that the algorithm does not change with where a slice of rows starts
  // (expert segments, SliceRows): only with the weight shape.
  GemmShape reference = s;
  reference.n = kReferenceRows;
  reference.align_a = std::min<uint32_t>(s.align_a, 16);
  reference.align_b = std::min<uint32_t>(s.align_b, 16);
  reference.align_c = std::min<uint32_t>(s.align_c, 16);
  auto ref = reference_algos_.find(reference);
  if (ref == reference_algos_.end()) {
    ASSIGN_OR_RETURN(std::optional<cublasLtMatmulAlgo_t> algo, Heuristic(reference));
    ref = reference_algos_.emplace(reference, algo).first;
  }
  if (ref->second.has_value()) {
    cublasLtMatmulHeuristicResult_t check{};
    const LtDescriptors& d = *plan->descriptors;
    if (cublasLtMatmulAlgoCheck(lt_, d.op, d.a, d.b, d.c, d.c, &*ref->second, &check) == CUBLAS_STATUS_SUCCESS &&
        check.workspaceSize == 0) {
      plan->use_lt = true;
      plan->batch_invariant = true;
      plan->algo = *ref->second;
    }
  }
  if (!plan->use_lt) {
    ASSIGN_OR_RETURN(std::optional<cublasLtMatmulAlgo_t> algo, Heuristic(s));
    if (algo.has_value()) {
      plan->use_lt = true;
      plan->algo = *algo;
    }
  }
  return plans_.emplace(s, std::move(plan)).first->second.get();
}

absl::Status BatchInvariantGemm::Run(const GemmShape& s, const void* a, const void* b, void* c) {
  if (s.m == 0 || s.n == 0 || s.batch == 0) return absl::OkStatus();
  if (s.k == 0) {
    if (s.batch != 1 || s.ldc != s.m) return absl::UnimplementedError("GEMM with k = 0 on a strided output");
    CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(c, 0, static_cast<size_t>(s.m * s.n) * (s.c_type == CUDA_R_32F ? 4 : 2), stream_));
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(const Plan* plan, PlanFor(s));
  const float alpha = 1.0f, beta = 0.0f;
  if (plan->use_lt) {
    const LtDescriptors& d = *plan->descriptors;
    CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(lt_, d.op, &alpha, a, d.a, b, d.b, &beta, c, d.c, c, d.c, &plan->algo,
                                          nullptr, 0, stream_));
    return absl::OkStatus();
  }
  CUBLAS_RETURN_IF_ERROR(cublasGemmStridedBatchedEx(
      blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(s.m), static_cast<int>(s.n), static_cast<int>(s.k), &alpha,
      a, CUDA_R_16BF, static_cast<int>(s.lda), s.stride_a, b, CUDA_R_16BF, static_cast<int>(s.ldb), s.stride_b,
      &beta, c, s.c_type, static_cast<int>(s.ldc), s.stride_c, static_cast<int>(s.batch), CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace mlaserve
