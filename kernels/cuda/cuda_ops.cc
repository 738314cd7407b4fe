// CudaOps: the Ops interface on one Hopper GPU (see cuda_ops.h for the
// conventions). Host side of every op: shape, dtype and id checks (as
// kernels/cpu does them), cuBLASLt GEMMs, kernel launches. Host arrays reach
// the device through DeviceArrays; steps are recorded by StepGraphs.
#include "kernels/cuda/cuda_ops.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <utility>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_arrays.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/mla_attention.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/pinned_upload.h"
#include "kernels/cuda/rms_norm.h"
#include "kernels/cuda/sampling.h"
#include "kernels/latent_row.h"
#include "kernels/shape_check.h"

namespace mlaserve {
namespace {

using bf16 = __nv_bfloat16;

// The device and stream shared by a CudaOps and every tensor it allocated:
// tensors hold it through their deleters, so freeing stays valid after the
// CudaOps is gone. At process exit the runtime may already be unloading;
// the frees' errors are then ignored (the driver reclaims the memory).
struct StreamContext {
  int device = 0;
  cudaStream_t stream = nullptr;
  ~StreamContext() {
    if (stream == nullptr) return;
    int previous = -1;
    if (cudaGetDevice(&previous) != cudaSuccess) return;
    cudaSetDevice(device);
    cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
    cudaSetDevice(previous);
  }
};

// Switches the calling thread to `device` for the scope (restoring the previous one).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device) {
      cudaSetDevice(device);
    } else {
      previous_ = -1;
    }
  }
  ~DeviceScope() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }

 private:
  int previous_ = -1;
};

struct DeviceFree {
  std::shared_ptr<StreamContext> context;
  void operator()(void* ptr) const {
    if (ptr == nullptr) return;
    DeviceScope scope(context->device);
    cudaFreeAsync(ptr, context->stream);  // errors at process exit are ignored
  }
};

// A CUDA tensor owning `data` (freed in stream order when the last copy goes).
Tensor Adopt(const std::shared_ptr<StreamContext>& context, void* data, DType dtype, std::vector<int64_t> shape) {
  Tensor t;
  t.dtype = dtype;
  t.device = Device::kCuda;
  t.shape = std::move(shape);
  t.storage = std::shared_ptr<void>(data, DeviceFree{context});
  t.data = data;
  return t;
}

absl::Status CheckCuda(absl::string_view op, absl::string_view operand, const Tensor& t) {
  if (t.device == Device::kCuda || t.numel() == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", operand, " is not a CUDA tensor"));
}

// CheckCuda and CheckDType together.
absl::Status CheckOperand(absl::string_view op, absl::string_view operand, const Tensor& t, DType dtype) {
  RETURN_IF_ERROR(CheckCuda(op, operand, t));
  return CheckDType(op, operand, t, dtype);
}

bf16* Bf16(const Tensor& t) { return static_cast<bf16*>(t.data); }

// An FP8 weight or activation as the GEMM kernels take it (scales checked by CheckFp8Weight).
cuda::Fp8Operand Fp8(const Tensor& t) { return {t.as<uint8_t>(), t.scale->as<float>()}; }

class CudaOps final : public Ops {
 public:
  CudaOps(int device, CudaOpsOptions options) : options_(options), context_(std::make_shared<StreamContext>()) {
    context_->device = device;
  }

  ~CudaOps() override {
    DeviceScope scope(context_->device);
    if (context_->stream != nullptr) cudaStreamSynchronize(context_->stream);
    graphs_.reset();
    attention_.reset();
    gemm_.reset();
    upload_.reset();
    arrays_.reset();
  }

  absl::Status Init() {
    const int device = context_->device;
    CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
    cudaDeviceProp prop;
    CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
    if (prop.major != 9 || prop.minor != 0) {
      return absl::FailedPreconditionError(absl::StrCat("CUDA device ", device, " (", prop.name,
                                                        ") has compute capability ", prop.major, ".", prop.minor,
                                                        "; the kernels are built for sm_90a (Hopper) only"));
    }
    // Keep freed pool memory for reuse instead of returning it at every sync.
    cudaMemPool_t pool;
    CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t threshold = UINT64_MAX;
    CUDA_RETURN_IF_ERROR(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&context_->stream, cudaStreamNonBlocking));
    arrays_ = std::make_unique<DeviceArrays>(context_->stream);
    ASSIGN_OR_RETURN(gemm_, BatchInvariantGemm::Create(context_->stream));
    attention_ = std::make_unique<MlaAttention>(context_->stream);
    if (options_.step_graphs) {
      graphs_ = std::make_unique<StepGraphs>(context_->stream, [context = context_](void* data, DType dtype,
                                                                                    std::vector<int64_t> shape) {
        return Adopt(context, data, dtype, std::move(shape));
      });
    }
    return absl::OkStatus();
  }

  const StepGraphStats& step_graph_stats() const { return graphs_ != nullptr ? graphs_->stats() : no_graphs_; }

  std::string_view name() const override { return "cuda"; }
  DType storage_dtype() const override { return DType::kBF16; }

  // ---- Memory ----

  absl::StatusOr<Tensor> Empty(DType dtype, std::vector<int64_t> shape) override {
    Tensor t = Adopt(context_, nullptr, dtype, std::move(shape));
    for (int64_t d : t.shape) {
      if (d < 0) return absl::InvalidArgumentError(absl::StrCat("negative extent in ", t.ShapeString()));
    }
    const size_t bytes = t.num_bytes();
    if (bytes == 0) return t;
    DeviceScope scope(context_->device);
    void* data = nullptr;
    const cudaError_t err = cudaMallocAsync(&data, bytes, stream());
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state of the allocation failure
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes on CUDA device ",
                                                       context_->device, ": ", cudaGetErrorString(err)));
    }
    return Adopt(context_, data, dtype, std::move(t.shape));
  }

  absl::Status Upload(absl::Span<const float> src, Tensor* dst) override {
    RETURN_IF_ERROR(CheckCuda("Upload", "dst", *dst));
    if (static_cast<int64_t>(src.size()) != dst->numel()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Upload: ", src.size(), " values into a tensor of ", dst->numel()));
    }
    if (src.empty()) return absl::OkStatus();
    DeviceScope scope(context_->device);
    const void* host = nullptr;
    std::vector<uint16_t> bf16_bits;
    std::vector<int32_t> ints;
    std::vector<uint8_t> bytes;
    switch (dst->dtype) {
      case DType::kF32:
        host = src.data();
        break;
      case DType::kBF16:
        bf16_bits.resize(src.size());
        std::transform(src.begin(), src.end(), bf16_bits.begin(), F32ToBf16);
        host = bf16_bits.data();
        break;
      case DType::kI32:
        ints.resize(src.size());
        std::transform(src.begin(), src.end(), ints.begin(), [](float v) { return static_cast<int32_t>(v); });
        host = ints.data();
        break;
      case DType::kU8:  // an FP8 latent cache's bytes (kernels/latent_row.h)
        bytes.resize(src.size());
        std::transform(src.begin(), src.end(), bytes.begin(), [](float v) { return static_cast<uint8_t>(v); });
        host = bytes.data();
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat("Upload: unsupported dtype ",
                                                       std::string(DTypeName(dst->dtype)),
                                                       " (the CUDA backend uploads F32, BF16, I32 and U8)"));
    }
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst->data, host, dst->num_bytes(), cudaMemcpyHostToDevice, stream()));
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));
    return absl::OkStatus();
  }

  absl::Status UploadBytes(const void* src, size_t num_bytes, Tensor* dst) override {
    RETURN_IF_ERROR(CheckCuda("UploadBytes", "dst", *dst));
    if (num_bytes != dst->num_bytes()) {
      return absl::InvalidArgumentError(
          absl::StrCat("UploadBytes: ", num_bytes, " bytes into a tensor of ", dst->num_bytes()));
    }
    if (num_bytes == 0) return absl::OkStatus();
    DeviceScope scope(context_->device);
    if (upload_ == nullptr) {
      ASSIGN_OR_RETURN(upload_, PinnedUpload::Create(stream()));
    }
    return upload_->Copy(src, num_bytes, dst->data);
  }

  absl::StatusOr<Tensor> QuantizeFp8(const Tensor& w) override {
    RETURN_IF_ERROR(CheckOperand("QuantizeFp8", "w", w, DType::kBF16));
    if (w.rank() == 0) return absl::InvalidArgumentError("QuantizeFp8: a scalar has no rows");
    const int64_t k = w.dim(-1), rows = k == 0 ? 0 : w.numel() / k;
    if (k % 16 != 0) {
      return absl::InvalidArgumentError(absl::StrCat("QuantizeFp8: rows of ", k, " values (needs a multiple of 16)"));
    }
    ASSIGN_OR_RETURN(Tensor q, Empty(DType::kF8E4M3, w.shape));
    std::vector<int64_t> scale_shape = w.shape;
    scale_shape.back() = Fp8Groups(k);
    ASSIGN_OR_RETURN(Tensor scale, Empty(DType::kF32, std::move(scale_shape)));
    DeviceScope scope(context_->device);
    CUDA_RETURN_IF_ERROR(cuda::QuantizeFp8Rows(Bf16(w), rows, k, q.as<uint8_t>(), scale.as<float>(), stream()));
    q.scale = std::make_shared<Tensor>(std::move(scale));
    return q;
  }

  absl::Status Download(const Tensor& src, absl::Span<float> dst) override {
    RETURN_IF_ERROR(CheckCuda("Download", "src", src));
    if (static_cast<int64_t>(dst.size()) != src.numel()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Download: tensor of ", src.numel(), " values into ", dst.size()));
    }
    if (dst.empty()) return absl::OkStatus();
    DeviceScope scope(context_->device);
    if (src.dtype == DType::kF32) {
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst.data(), src.data, src.num_bytes(), cudaMemcpyDeviceToHost, stream()));
      CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));
      return absl::OkStatus();
    }
    std::vector<char> host(src.num_bytes());
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host.data(), src.data, host.size(), cudaMemcpyDeviceToHost, stream()));
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));
    ConvertToF32(src.dtype, host.data(), dst.size(), dst.data());
    return absl::OkStatus();
  }

  absl::Status Fill(Tensor* dst, float value) override {
    RETURN_IF_ERROR(CheckCuda("Fill", "dst", *dst));
    DeviceScope scope(context_->device);
    const int64_t n = dst->numel();
    switch (dst->dtype) {
      case DType::kBF16:
        CUDA_RETURN_IF_ERROR(cuda::Fill16(static_cast<uint16_t*>(dst->data), n, F32ToBf16(value), stream()));
        return absl::OkStatus();
      case DType::kF32: {
        uint32_t bits;
        std::memcpy(&bits, &value, sizeof(bits));
        CUDA_RETURN_IF_ERROR(cuda::Fill32(static_cast<uint32_t*>(dst->data), n, bits, stream()));
        return absl::OkStatus();
      }
      case DType::kI32: {
        const int32_t v = static_cast<int32_t>(value);
        uint32_t bits;
        std::memcpy(&bits, &v, sizeof(bits));
        CUDA_RETURN_IF_ERROR(cuda::Fill32(static_cast<uint32_t*>(dst->data), n, bits, stream()));
        return absl::OkStatus();
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("Fill: unsupported dtype ", std::string(DTypeName(dst->dtype))));
    }
  }

  absl::Status FillRandom(Tensor* dst, uint64_t seed, float mean, float stddev) override {
    RETURN_IF_ERROR(CheckCuda("FillRandom", "dst", *dst));
    DeviceScope scope(context_->device);
    if (dst->dtype == DType::kBF16) {
      CUDA_RETURN_IF_ERROR(cuda::FillRandom(Bf16(*dst), dst->numel(), seed, mean, stddev, stream()));
    } else if (dst->dtype == DType::kF32) {
      CUDA_RETURN_IF_ERROR(cuda::FillRandom(dst->as<float>(), dst->numel(), seed, mean, stddev, stream()));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("FillRandom: unsupported dtype ", std::string(DTypeName(dst->dtype))));
    }
    return absl::OkStatus();
  }

  absl::Status Synchronize() override {
    DeviceScope scope(context_->device);
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));
    return absl::OkStatus();
  }

  // ---- Elementwise and row ops ----

  absl::Status Embedding(const Tensor& table, absl::Span<const int32_t> ids, Tensor* out) override {
    RETURN_IF_ERROR(CheckCuda("Embedding", "table", table));
    RETURN_IF_ERROR(CheckShape("Embedding", "table", table, {-1, -1}));
    const int64_t vocab = table.dim(0), d = table.dim(1), rows = static_cast<int64_t>(ids.size());
    RETURN_IF_ERROR(CheckOperand("Embedding", "out", *out, table.dtype));
    RETURN_IF_ERROR(CheckShape("Embedding", "out", *out, {rows, d}));
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", id, " outside the vocabulary [0, ", vocab, ")"));
      }
    }
    if (rows == 0 || d == 0) return absl::OkStatus();
    DeviceScope scope(context_->device);
    ASSIGN_OR_RETURN(const int32_t* device_ids, DeviceArray(ids));
    CUDA_RETURN_IF_ERROR(cuda::GatherRows(table.data, device_ids, rows, d * static_cast<int64_t>(DTypeBytes(table.dtype)),
                                          out->data, stream()));
    return absl::OkStatus();
  }

  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor* out) override {
    RETURN_IF_ERROR(CheckShape("RmsNorm", "weight", weight, {-1}));
    const int64_t d = weight.dim(0), rows = d == 0 ? 0 : x.numel() / d;
    RETURN_IF_ERROR(CheckOperand("RmsNorm", "x", x, DType::kBF16));
    RETURN_IF_ERROR(CheckOperand("RmsNorm", "weight", weight, DType::kBF16));
    RETURN_IF_ERROR(CheckOperand("RmsNorm", "out", *out, DType::kBF16));
    RETURN_IF_ERROR(CheckShape("RmsNorm", "x", x, {rows, d}));
    RETURN_IF_ERROR(CheckShape("RmsNorm", "out", *out, {rows, d}));
    DeviceScope scope(context_->device);
    CUDA_RETURN_IF_ERROR(cuda::RmsNorm(Bf16(x), Bf16(weight), eps, static_cast<int>(rows), static_cast<int>(d),
                                       Bf16(*out), stream()));
    return absl::OkStatus();
  }

  absl::Status AddRmsNorm(Tensor* residual, const Tensor& x, const Tensor& weight, float eps,
                          Tensor* out) override {
    RETURN_IF_ERROR(CheckShape("AddRmsNorm", "weight", weight, {-1}));
    const int64_t d = weight.dim(0), rows = d == 0 ? 0 : residual->numel() / d;
    RETURN_IF_ERROR(CheckOperand("AddRmsNorm", "residual", *residual, DType::kBF16));
    RETURN_IF_ERROR(CheckOperand("AddRmsNorm", "x", x, DType::kBF16));
    RETURN_IF_ERROR(CheckOperand("AddRmsNorm", "weight", weight, DType::kBF16));
    RETURN_IF_ERROR(CheckOperand("AddRmsNorm", "out", *out, DType::kBF16));
    RETURN_IF_ERROR(CheckShape("AddRmsNorm", "residual", *residual, {rows, d}));
    RETURN_IF_ERROR(CheckShape("AddRmsNorm", "out", *out, {rows, d}));
    if (x.numel() != residual->numel()) {
      return absl::InvalidArgumentError(
          absl::StrCat("AddRmsNorm: ", residual->ShapeString(), " + ", x.ShapeString()));
    }
    DeviceScope scope(context_->device);
    CUDA_RETURN_IF_ERROR(cuda::AddRmsNorm(Bf16(*residual), Bf16(x), Bf16(weight), eps, static_cast<int>(rows),
                                          static_cast<int>(d), Bf16(*out), stream()));
    return absl::OkStatus();
  }

  absl::Status Linear(const Tensor& x, const Tensor& w, Tensor* out) override {
    RETURN_IF_ERROR(CheckShape("Linear", "w", w, {-1, -1}));
    const int64_t n = w.dim(0), k = w.dim(1), rows = x.rank() > 0 ? x.dim(0) : 0;
    RETURN_IF_ERROR(CheckOperand("Linear", "x", x, DType::kBF16));
    RETURN_IF_ERROR(CheckShape("Linear", "x", x, {rows, k}));
    RETURN_IF_ERROR(CheckShape("Linear", "out", *out, {rows, n}));
    RETURN_IF_ERROR(CheckCuda("Linear", "out", *out));
    if (w.dtype == DType::kF8E4M3) return LinearFp8(x, w, out);
    RETURN_IF_ERROR(CheckOperand("Linear", "w", w, DType::kBF16));
    ASSIGN_OR_RETURN(cudaDataType_t c_type, OutputType("Linear", *out));
    GemmShape s;
    s.m = n, s.n = rows, s.k = k;
    s.lda = k, s.ldb = k, s.ldc = n;
    s.c_type = c_type;
    s.align_a = Alignment(w.data, 0), s.align_b = Alignment(x.data, 0), s.align_c = Alignment(out->data, 0);
    DeviceScope scope(context_->device);
    return gemm_->Run(s, w.data, x.data, out->data);
  }

  // x quantized per row and group into pool memory, then the FP8 GEMM.
  absl::Status LinearFp8(const Tensor& x, const Tensor& w, Tensor* out) {
    RETURN_IF_ERROR(CheckCuda("Linear", "w", w));
    RETURN_IF_ERROR(CheckFp8Weight("Linear", "w", w));
    RETURN_IF_ERROR(CheckDType("Linear", "out", *out, DType::kBF16));
    const int64_t n = w.dim(0), k = w.dim(1), rows = x.dim(0);
    if (rows == 0 || n == 0) return absl::OkStatus();
    ASSIGN_OR_RETURN(Tensor x_q, QuantizeFp8(x));
    ASSIGN_OR_RETURN(Tensor workspace, Empty(DType::kF32, {cuda::DenseFp8WorkspaceFloats(rows, n, k)}));
    DeviceScope scope(context_->device);
    CUDA_RETURN_IF_ERROR(
        cuda::DenseGemmFp8(Fp8(w), n, k, Fp8(x_q), rows, workspace.as<float>(), Bf16(*out), stream()));
    return absl::OkStatus();
  }

  absl::Status HeadLinear(const Tensor& x, const Tensor& w, Tensor* out) override {
    RETURN_IF_ERROR(CheckShape("HeadLinear", "w", w, {-1, -1, -1}));
    const int64_t heads = w.dim(0), n = w.dim(1), k = w.dim(2), rows = x.rank() > 0 ? x.dim(0) : 0;
    RETURN_IF_ERROR(CheckOperand("HeadLinear", "x", x, DType::kBF16));
    RETURN_IF_ERROR(CheckOperand("HeadLinear", "w", w, DType::kBF16));
    RETURN_IF_ERROR(CheckShape("HeadLinear", "x", x, {rows, heads, k}));
    RETURN_IF_ERROR(CheckShape("HeadLinear", "out", *out, {rows, heads, n}));
    RETURN_IF_ERROR(CheckCuda("HeadLinear", "out", *out));
    ASSIGN_OR_RETURN(cudaDataType_t c_type, OutputType("HeadLinear", *out));
    const int64_t c_bytes = c_type == CUDA_R_32F ? 4 : 2;
    // Head h: A = w[h] (k x n stored), B = x[:, h, :] (ld heads * k), C = out[:, h, :] (ld heads * n).
    GemmShape s;
    s.m = n, s.n = rows, s.k = k;
    s.lda = k, s.ldb = heads * k, s.ldc = heads * n;
    s.stride_a = n * k, s.stride_b = k, s.stride_c = n;
    s.batch = heads;
    s.c_type = c_type;
    s.align_a = Alignment(w.data, s.stride_a * 2), s.align_b = Alignment(x.data, s.stride_b * 2);
    s.align_c = Alignment(out->data, s.stride_c * c_bytes);
    DeviceScope scope(context_->device);
    return gemm_->Run(s, w.data, x.data, out->data);
  }

  absl::Status Rope(Tensor* x, absl::Span<const int32_t> positions, const RopeTable& table) override {
    const int64_t rows = static_cast<int64_t>(positions.size()), dim = table.rope_dim;
    RETURN_IF_ERROR(CheckOperand("Rope", "x", *x, DType::kBF16));
    RETURN_IF_ERROR(CheckShape("Rope", "x", *x, {rows, -1, dim}));
    if (dim % 2 != 0 || dim / 2 > cuda::kMaxRopePairs || static_cast<int64_t>(table.inv_freq.size()) != dim / 2) {
      return absl::InvalidArgumentError(absl::StrCat("Rope: rope_dim ", dim, " with ", table.inv_freq.size(),
                                                     " frequencies (even, at most ", 2 * cuda::kMaxRopePairs, ")"));
    }
    if (x->numel() == 0) return absl::OkStatus();
    cuda::RopeParams params;
    params.rows = rows;
    params.heads = x->dim(1);
    params.dim = dim;
    params.interleaved = table.interleaved;
    params.attention_factor = table.attention_factor;
    std::copy(table.inv_freq.begin(), table.inv_freq.end(), params.inv_freq);
    DeviceScope scope(context_->device);
    ASSIGN_OR_RETURN(const int32_t* device_positions, DeviceArray(positions));
    CUDA_RETURN_IF_ERROR(cuda::Rope(Bf16(*x), device_positions, params, stream()));
    return absl::OkStatus();
  }

  absl::Status Add(Tensor* a, const Tensor& b) override {
    RETURN_IF_ERROR(CheckCuda("Add", "a", *a));
    RETURN_IF_ERROR(CheckCuda("Add", "b", b));
    if (a->numel() != b.numel() || a->dtype != b.dtype) {
      return absl::InvalidArgumentError(absl::StrCat("Add: ", a->ShapeString(), " ", std::string(DTypeName(a->dtype)),
                                                     " + ", b.ShapeString(), " ", std::string(DTypeName(b.dtype))));
    }
    DeviceScope scope(context_->device);
    if (a->dtype == DType::kBF16) {
      CUDA_RETURN_IF_ERROR(cuda::Add(Bf16(*a), Bf16(b), a->numel(), stream()));
    } else if (a->dtype == DType::kF32) {
      CUDA_RETURN_IF_ERROR(cuda::Add(a->as<float>(), b.as<float>(), a->numel(), stream()));
    } else {
      return absl::InvalidArgumentError(absl::StrCat("Add: unsupported dtype ", std::string(DTypeName(a->dtype))));
    }
    return absl::OkStatus();
  }

  absl::Status AddRows(const Tensor& src, absl::Span<const int32_t> rows, Tensor* dst) override {
    RETURN_IF_ERROR(CheckCuda("AddRows", "dst", *dst));
    RETURN_IF_ERROR(CheckShape("AddRows", "dst", *dst, {-1, -1}));
    const int64_t n = static_cast<int64_t>(rows.size()), d = dst->dim(1);
    RETURN_IF_ERROR(CheckOperand("AddRows", "src", src, dst->dtype));
    RETURN_IF_ERROR(CheckShape("AddRows", "src", src, {n, d}));
    if (dst->dtype != DType::kBF16 && dst->dtype != DType::kF32) {
      return absl::InvalidArgumentError(
          absl::StrCat("AddRows: unsupported dtype ", std::string(DTypeName(dst->dtype))));
    }
    for (int32_t r : rows) {
      if (r < 0 || r >= dst->dim(0)) {
        return absl::InvalidArgumentError(absl::StrCat("AddRows: row ", r, " outside [0, ", dst->dim(0), ")"));
      }
    }
    if (n == 0 || d == 0) return absl::OkStatus();
    // Group the sources by destination (stable: sources add in their order).
    std::vector<int32_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return rows[a] < rows[b]; });
    std::vector<int32_t> dst_rows, offsets{0};
    for (int64_t i = 0; i < n; ++i) {
      if (i == 0 || rows[order[i]] != rows[order[i - 1]]) {
        if (i > 0) offsets.push_back(static_cast<int32_t>(i));
        dst_rows.push_back(rows[order[i]]);
      }
    }
    offsets.push_back(static_cast<int32_t>(n));
    DeviceScope scope(context_->device);
    MetaPack pack;
    const size_t rows_at = pack.Add(dst_rows), offsets_at = pack.Add(offsets), order_at = pack.Add(order);
    ASSIGN_OR_RETURN(const char* meta, UploadMeta(pack));
    const auto* dst_rows_d = reinterpret_cast<const int32_t*>(meta + rows_at);
    const auto* offsets_d = reinterpret_cast<const int32_t*>(meta + offsets_at);
    const auto* order_d = reinterpret_cast<const int32_t*>(meta + order_at);
    const int64_t groups = static_cast<int64_t>(dst_rows.size());
    if (dst->dtype == DType::kBF16) {
      CUDA_RETURN_IF_ERROR(
          cuda::AddRowsGrouped(Bf16(src), dst_rows_d, offsets_d, order_d, groups, d, Bf16(*dst), stream()));
    } else {
      CUDA_RETURN_IF_ERROR(cuda::AddRowsGrouped(src.as<float>(), dst_rows_d, offsets_d, order_d, groups, d,
                                                dst->as<float>(), stream()));
    }
    return absl::OkStatus();
  }

  absl::Status SiluMul(const Tensor& x, Tensor* out) override {
    RETURN_IF_ERROR(CheckShape("SiluMul", "x", x, {-1, -1}));
    const int64_t rows = x.dim(0), inner = x.dim(1) / 2;
    RETURN_IF_ERROR(CheckOperand("SiluMul", "x", x, DType::kBF16));
    RETURN_IF_ERROR(CheckOperand("SiluMul", "out", *out, DType::kBF16));
    RETURN_IF_ERROR(CheckShape("SiluMul", "x", x, {rows, 2 * inner}));
    RETURN_IF_ERROR(CheckShape("SiluMul", "out", *out, {rows, inner}));
    DeviceScope scope(context_->device);
    CUDA_RETURN_IF_ERROR(cuda::SiluMul(Bf16(x), rows, inner, Bf16(*out), stream()));
    return absl::OkStatus();
  }

  // ---- Latent cache ----

  static cuda::Fp8RowLayout Fp8Layout(int64_t rank, int64_t rope) {
    const Fp8LatentRow row{rank, rope};
    return {.bytes = row.bytes(), .scales_at = row.scales_offset(), .rope_at = row.rope_offset()};
  }
  static absl::Status CheckFp8Rank(absl::string_view op, const Tensor& cache, int64_t rank) {
    if (!IsFp8LatentCache(cache) || rank % 16 == 0) return absl::OkStatus();
    return absl::UnimplementedError(absl::StrCat(op, ": an FP8 cache needs a rank divisible by 16, not ", rank));
  }

  absl::Status WriteLatentCache(const Tensor& c_kv, const Tensor& k_rope, absl::Span<const int64_t> slots,
                                int64_t layer, Tensor* cache) override {
    RETURN_IF_ERROR(CheckShape("WriteLatentCache", "c_kv", c_kv, {-1, -1}));
    RETURN_IF_ERROR(CheckShape("WriteLatentCache", "k_rope", k_rope, {-1, -1}));
    const int64_t rows = static_cast<int64_t>(slots.size()), rank = c_kv.dim(1), rope = k_rope.dim(1);
    RETURN_IF_ERROR(CheckOperand("WriteLatentCache", "c_kv", c_kv, DType::kBF16));
    RETURN_IF_ERROR(CheckOperand("WriteLatentCache", "k_rope", k_rope, DType::kBF16));
    const bool fp8 = IsFp8LatentCache(*cache);
    RETURN_IF_ERROR(CheckOperand("WriteLatentCache", "cache", *cache, fp8 ? DType::kU8 : DType::kBF16));
    RETURN_IF_ERROR(CheckShape("WriteLatentCache", "c_kv", c_kv, {rows, rank}));
    RETURN_IF_ERROR(CheckShape("WriteLatentCache", "k_rope", k_rope, {rows, rope}));
    RETURN_IF_ERROR(CheckShape("WriteLatentCache", "cache", *cache, {-1, -1, -1, LatentRowWidth(*cache, rank, rope)}));
    RETURN_IF_ERROR(CheckFp8Rank("WriteLatentCache", *cache, rank));
    if (layer < 0 || layer >= cache->dim(1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("WriteLatentCache: layer ", layer, " outside [0, ", cache->dim(1), ")"));
    }
    const int64_t block_size = cache->dim(2), num_slots = cache->dim(0) * block_size;
    for (int64_t slot : slots) {
      if (slot != kSlotElsewhere && (slot < 0 || slot >= num_slots)) {
        return absl::OutOfRangeError(absl::StrCat("cache slot ", slot, " outside [0, ", num_slots, ")"));
      }
    }
    if (rows == 0) return absl::OkStatus();
    DeviceScope scope(context_->device);
    ASSIGN_OR_RETURN(const int64_t* device_slots, DeviceArray(slots));
    const cuda::LatentCacheGeometry geometry{
        .layers = cache->dim(1), .block_size = block_size, .rank = rank, .rope = rope, .layer = layer};
    if (fp8) {
      CUDA_RETURN_IF_ERROR(cuda::WriteLatentCacheFp8(Bf16(c_kv), Bf16(k_rope), device_slots, rows, geometry,
                                                     Fp8Layout(rank, rope), cache->as<uint8_t>(), stream()));
      return absl::OkStatus();
    }
    CUDA_RETURN_IF_ERROR(
        cuda::WriteLatentCache(Bf16(c_kv), Bf16(k_rope), device_slots, rows, geometry, Bf16(*cache), stream()));
    return absl::OkStatus();
  }

  absl::Status GatherLatent(const Tensor& cache, int64_t layer, absl::Span<const int32_t> block_table,
                            int64_t num_positions, Tensor* c_kv, Tensor* k_rope) override {
    RETURN_IF_ERROR(CheckShape("GatherLatent", "cache", cache, {-1, -1, -1, -1}));
    RETURN_IF_ERROR(CheckShape("GatherLatent", "c_kv", *c_kv, {num_positions, -1}));
    RETURN_IF_ERROR(CheckShape("GatherLatent", "k_rope", *k_rope, {num_positions, -1}));
    const int64_t block_size = cache.dim(2), rank = c_kv->dim(1), rope = k_rope->dim(1);
    const bool fp8 = IsFp8LatentCache(cache);
    RETURN_IF_ERROR(CheckOperand("GatherLatent", "cache", cache, fp8 ? DType::kU8 : DType::kBF16));
    RETURN_IF_ERROR(CheckOperand("GatherLatent", "c_kv", *c_kv, DType::kBF16));
    RETURN_IF_ERROR(CheckOperand("GatherLatent", "k_rope", *k_rope, DType::kBF16));
    RETURN_IF_ERROR(CheckShape("GatherLatent", "cache", cache, {-1, -1, block_size, LatentRowWidth(cache, rank, rope)}));
    RETURN_IF_ERROR(CheckFp8Rank("GatherLatent", cache, rank));
    if (layer < 0 || layer >= cache.dim(1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("GatherLatent: layer ", layer, " outside [0, ", cache.dim(1), ")"));
    }
    const int64_t needed = block_size == 0 ? 0 : (num_positions + block_size - 1) / block_size;
    if (static_cast<int64_t>(block_table.size()) < needed) {
      return absl::InvalidArgumentError(absl::StrCat("sequence of ", num_positions, " positions has ",
                                                     block_table.size(), " blocks of ", block_size));
    }
    for (int64_t b = 0; b < needed; ++b) {
      if (block_table[b] < 0 || block_table[b] >= cache.dim(0)) {
        return absl::OutOfRangeError(absl::StrCat("block ", block_table[b], " outside the pool of ", cache.dim(0)));
      }
    }
    if (num_positions == 0) return absl::OkStatus();
    DeviceScope scope(context_->device);
    MetaPack pack;
    const size_t table_at = pack.Add(block_table.data(), static_cast<size_t>(needed));
    ASSIGN_OR_RETURN(const char* meta, UploadMeta(pack));
    const cuda::LatentCacheGeometry geometry{
        .layers = cache.dim(1), .block_size = block_size, .rank = rank, .rope = rope, .layer = layer};
    const auto* table = reinterpret_cast<const int32_t*>(meta + table_at);
    if (fp8) {
      CUDA_RETURN_IF_ERROR(cuda::GatherLatentFp8(cache.as<uint8_t>(), table, num_positions, geometry,
                                                 Fp8Layout(rank, rope), Bf16(*c_kv), Bf16(*k_rope), stream()));
      return absl::OkStatus();
    }
    CUDA_RETURN_IF_ERROR(cuda::GatherLatent(Bf16(cache), table, num_positions, geometry, Bf16(*c_kv), Bf16(*k_rope),
                                            stream()));
    return absl::OkStatus();
  }

  // ---- Attention (kernels/cuda/mla_attention) ----

  absl::Status MlaAbsorbedAttention(const Tensor& q_latent, const Tensor& q_rope, const Tensor& cache,
                                    int64_t layer, const AttentionLayout& layout, float softmax_scale,
                                    Tensor* out) override {
    RETURN_IF_ERROR(CheckCuda("MlaAbsorbedAttention", "q_latent", q_latent));
    RETURN_IF_ERROR(CheckCuda("MlaAbsorbedAttention", "q_rope", q_rope));
    RETURN_IF_ERROR(CheckCuda("MlaAbsorbedAttention", "cache", cache));
    RETURN_IF_ERROR(CheckCuda("MlaAbsorbedAttention", "out", *out));
    DeviceScope scope(context_->device);
    return attention_->Absorbed(q_latent, q_rope, cache, layer, layout, softmax_scale, out);
  }

  // Decode context parallelism runs on the CPU backend only: the absorbed
  // kernels neither skip blocks held elsewhere nor write their lse.
  absl::Status MlaAbsorbedAttentionPart(const Tensor&, const Tensor&, const Tensor&, int64_t, const AttentionLayout&,
                                        float, Tensor*, Tensor*) override {
    return absl::UnimplementedError("MlaAbsorbedAttentionPart (decode context parallelism) is not on the CUDA backend");
  }
  absl::Status CombineAttentionParts(const Tensor&, const Tensor&, Tensor*) override {
    return absl::UnimplementedError("CombineAttentionParts (decode context parallelism) is not on the CUDA backend");
  }
  bool AttendsInParts() const override { return false; }

  absl::Status MlaExpandedAttention(const Tensor& q_nope, const Tensor& q_rope, const Tensor& k_nope,
                                    const Tensor& k_rope, const Tensor& v, int64_t first_head, float softmax_scale,
                                    Tensor* out) override {
    RETURN_IF_ERROR(CheckCuda("MlaExpandedAttention", "q_nope", q_nope));
    RETURN_IF_ERROR(CheckCuda("MlaExpandedAttention", "q_rope", q_rope));
    RETURN_IF_ERROR(CheckCuda("MlaExpandedAttention", "k_nope", k_nope));
    RETURN_IF_ERROR(CheckCuda("MlaExpandedAttention", "k_rope", k_rope));
    RETURN_IF_ERROR(CheckCuda("MlaExpandedAttention", "v", v));
    RETURN_IF_ERROR(CheckCuda("MlaExpandedAttention", "out", *out));
    DeviceScope scope(context_->device);
    return attention_->Expanded(q_nope, q_rope, k_nope, k_rope, v, first_head, softmax_scale, out);
  }

  // ---- Mixture of experts ----

  absl::Status MoeRoute(const Tensor& logits, const Tensor* bias, const RouterConfig& config, Tensor* topk_ids,
                        Tensor* topk_weights) override {
    RETURN_IF_ERROR(CheckCuda("MoeRoute", "logits", logits));
    RETURN_IF_ERROR(CheckShape("MoeRoute", "logits", logits, {-1, -1}));
    const int64_t rows = logits.dim(0), experts = logits.dim(1);
    const bool grouped = (config.noaux_tc || config.group_limited) && config.num_groups > 1;
    if (config.top_k < 1 || config.top_k > experts || config.num_groups < 1 || experts % config.num_groups != 0 ||
        config.topk_groups > config.num_groups || (grouped && config.topk_groups < 1)) {
      return absl::InvalidArgumentError("MoeRoute: inconsistent router configuration");
    }
    if (experts > cuda::kMaxRouterExperts) {
      return absl::InvalidArgumentError(
          absl::StrCat("MoeRoute: ", experts, " experts, at most ", cuda::kMaxRouterExperts, " supported"));
    }
    RETURN_IF_ERROR(CheckOperand("MoeRoute", "topk_ids", *topk_ids, DType::kI32));
    RETURN_IF_ERROR(CheckShape("MoeRoute", "topk_ids", *topk_ids, {rows, config.top_k}));
    RETURN_IF_ERROR(CheckOperand("MoeRoute", "topk_weights", *topk_weights, DType::kF32));
    RETURN_IF_ERROR(CheckShape("MoeRoute", "topk_weights", *topk_weights, {rows, config.top_k}));
    if (bias != nullptr) {
      RETURN_IF_ERROR(CheckCuda("MoeRoute", "bias", *bias));
      RETURN_IF_ERROR(CheckShape("MoeRoute", "bias", *bias, {experts}));
    }
    if (rows == 0) return absl::OkStatus();
    DeviceScope scope(context_->device);
    ASSIGN_OR_RETURN(Tensor logits_f32, AsF32("MoeRoute", "logits", logits));
    Tensor bias_f32;
    if (bias != nullptr) {
      ASSIGN_OR_RETURN(bias_f32, AsF32("MoeRoute", "bias", *bias));
    }
    cuda::RouterParams params{.rows = rows,
                              .experts = experts,
                              .sigmoid = config.sigmoid,
                              .noaux_tc = config.noaux_tc,
                              .group_limited = config.group_limited,
                              .num_groups = config.num_groups,
                              .topk_groups = config.topk_groups,
                              .top_k = config.top_k,
                              .normalize = config.normalize,
                              .scaling = config.scaling};
    CUDA_RETURN_IF_ERROR(cuda::MoeRoute(logits_f32.as<float>(), bias != nullptr ? bias_f32.as<float>() : nullptr,
                                        params, topk_ids->as<int32_t>(), topk_weights->as<float>(), stream()));
    return absl::OkStatus();
  }

  // Expert GEMMs grouped per local expert, all on the device (kernels/cuda/moe.h):
  // the pairs are grouped by expert, the gate_up GEMM gathers their tokens'
  // rows, SiLU-gating, the down GEMM, then a per-token weighted sum in k
  // order. Buffers are sized for every pair being local, so nothing about
  // the routing comes back to the host.
  absl::Status MoeExperts(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                          const Tensor& gate_up, const Tensor& down, int64_t first_expert, Tensor* out) override {
    RETURN_IF_ERROR(CheckShape("MoeExperts", "x", x, {-1, -1}));
    RETURN_IF_ERROR(CheckShape("MoeExperts", "topk_ids", topk_ids, {x.dim(0), -1}));
    RETURN_IF_ERROR(CheckShape("MoeExperts", "gate_up", gate_up, {-1, -1, x.dim(1)}));
    const int64_t rows = x.dim(0), d = x.dim(1), top_k = topk_ids.dim(1);
    const int64_t local_experts = gate_up.dim(0), inner = gate_up.dim(1) / 2;
    RETURN_IF_ERROR(CheckOperand("MoeExperts", "x", x, DType::kBF16));
    RETURN_IF_ERROR(CheckOperand("MoeExperts", "topk_ids", topk_ids, DType::kI32));
    RETURN_IF_ERROR(CheckOperand("MoeExperts", "topk_weights", topk_weights, DType::kF32));
    RETURN_IF_ERROR(CheckCuda("MoeExperts", "gate_up", gate_up));
    RETURN_IF_ERROR(CheckCuda("MoeExperts", "down", down));
    const bool fp8 = gate_up.dtype == DType::kF8E4M3;
    if (fp8) {
      RETURN_IF_ERROR(CheckFp8Weight("MoeExperts", "gate_up", gate_up));
      RETURN_IF_ERROR(CheckFp8Weight("MoeExperts", "down", down));
    } else {
      RETURN_IF_ERROR(CheckDType("MoeExperts", "gate_up", gate_up, DType::kBF16));
      RETURN_IF_ERROR(CheckDType("MoeExperts", "down", down, DType::kBF16));
    }
    RETURN_IF_ERROR(CheckOperand("MoeExperts", "out", *out, DType::kBF16));
    RETURN_IF_ERROR(CheckShape("MoeExperts", "gate_up", gate_up, {local_experts, 2 * inner, d}));
    RETURN_IF_ERROR(CheckShape("MoeExperts", "down", down, {local_experts, d, inner}));
    RETURN_IF_ERROR(CheckShape("MoeExperts", "topk_weights", topk_weights, {rows, top_k}));
    RETURN_IF_ERROR(CheckShape("MoeExperts", "out", *out, {rows, d}));
    const int64_t multiple = fp8 ? 16 : 8;
    if (d % multiple != 0 || inner % multiple != 0) {
      return absl::InvalidArgumentError(absl::StrCat("MoeExperts: hidden size ", d, " and expert size ", inner,
                                                     " must be multiples of ", multiple));
    }
    if (rows == 0 || d == 0) return absl::OkStatus();
    DeviceScope scope(context_->device);
    const int64_t max_pairs = rows * top_k, tile_pairs = cuda::ExpertTilePairs(max_pairs, local_experts);
    const int64_t max_tiles = cuda::MaxExpertTiles(max_pairs, local_experts, tile_pairs);
    static_assert(sizeof(cuda::ExpertTile) == 4 * sizeof(int32_t));
    ASSIGN_OR_RETURN(Tensor grouping, Empty(DType::kI32, {2 * max_pairs + 4 * max_tiles + 1}));
    int32_t* pair_token = grouping.as<int32_t>();
    int32_t* pair_of = pair_token + max_pairs;
    auto* tiles = reinterpret_cast<cuda::ExpertTile*>(pair_of + max_pairs);
    auto* num_tiles = reinterpret_cast<int32_t*>(tiles + max_tiles);
    CUDA_RETURN_IF_ERROR(cuda::MoeGroupPairs(topk_ids.as<int32_t>(), rows, top_k, first_expert, local_experts,
                                             tile_pairs, pair_token, pair_of, tiles, num_tiles, stream()));
    ASSIGN_OR_RETURN(Tensor hidden, Empty(DType::kBF16, {max_pairs, 2 * inner}));
    ASSIGN_OR_RETURN(Tensor act, Empty(DType::kBF16, {max_pairs, inner}));
    ASSIGN_OR_RETURN(Tensor y, Empty(DType::kBF16, {max_pairs, d}));
    if (fp8) {
      // Tokens quantized once (the gather reads their rows), the gated activations per pair.
      ASSIGN_OR_RETURN(Tensor x_q, QuantizeFp8(x));
      CUDA_RETURN_IF_ERROR(cuda::GroupedExpertGemmFp8(Fp8(gate_up), 2 * inner, d, Fp8(x_q), pair_token, tile_pairs,
                                                      tiles, num_tiles, max_tiles, Bf16(hidden), stream()));
      CUDA_RETURN_IF_ERROR(cuda::SiluMul(Bf16(hidden), max_pairs, inner, Bf16(act), stream()));
      ASSIGN_OR_RETURN(Tensor act_q, QuantizeFp8(act));
      CUDA_RETURN_IF_ERROR(cuda::GroupedExpertGemmFp8(Fp8(down), d, inner, Fp8(act_q), nullptr, tile_pairs, tiles,
                                                      num_tiles, max_tiles, Bf16(y), stream()));
    } else {
      CUDA_RETURN_IF_ERROR(cuda::GroupedExpertGemm(Bf16(gate_up), 2 * inner, d, Bf16(x), pair_token, tile_pairs,
                                                   tiles, num_tiles, max_tiles, Bf16(hidden), stream()));
      CUDA_RETURN_IF_ERROR(cuda::SiluMul(Bf16(hidden), max_pairs, inner, Bf16(act), stream()));
      CUDA_RETURN_IF_ERROR(cuda::GroupedExpertGemm(Bf16(down), d, inner, Bf16(act), nullptr, tile_pairs, tiles,
                                                   num_tiles, max_tiles, Bf16(y), stream()));
    }
    CUDA_RETURN_IF_ERROR(
        cuda::MoeCombine(Bf16(y), topk_weights.as<float>(), pair_of, rows, top_k, d, Bf16(*out), stream()));
    return absl::OkStatus();
  }

  absl::Status SampleTokens(const Tensor& logits, int64_t vocab, absl::Span<const SamplerParams> params,
                            absl::Span<const int64_t> sample_indices, absl::Span<int32_t> tokens) override {
    RETURN_IF_ERROR(CheckCuda("SampleTokens", "logits", logits));
    RETURN_IF_ERROR(CheckSampleArgs(logits, vocab, params.size(), sample_indices.size(), tokens.size()));
    const int64_t rows = logits.dim(1);
    if (rows == 0) return absl::OkStatus();
    std::vector<cuda::SampleRow> rows_params(rows);
    for (int64_t r = 0; r < rows; ++r) {
      rows_params[r] = {.temperature = params[r].temperature, .top_k = params[r].top_k, .top_p = params[r].top_p,
                        .seed = params[r].seed, .sample_index = static_cast<uint64_t>(sample_indices[r])};
    }
    DeviceScope scope(context_->device);
    MetaPack pack;
    const size_t params_at = pack.Add(rows_params);
    ASSIGN_OR_RETURN(const char* meta, UploadMeta(pack));
    ASSIGN_OR_RETURN(Tensor sampled, Empty(DType::kI32, {rows}));
    const cuda::LogitsLayout layout{.shards = logits.dim(0), .rows = rows, .shard_vocab = logits.dim(2), .vocab = vocab};
    const auto* rows_device = reinterpret_cast<const cuda::SampleRow*>(meta + params_at);
    if (logits.dtype == DType::kF32) {
      CUDA_RETURN_IF_ERROR(cuda::SampleTokens(logits.as<float>(), layout, rows_device, sampled.as<int32_t>(), stream()));
    } else {
      RETURN_IF_ERROR(CheckDType("SampleTokens", "logits", logits, DType::kBF16));
      CUDA_RETURN_IF_ERROR(cuda::SampleTokens(Bf16(logits), layout, rows_device, sampled.as<int32_t>(), stream()));
    }
    CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(tokens.data(), sampled.data, rows * sizeof(int32_t), cudaMemcpyDeviceToHost, stream()));
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));
    return absl::OkStatus();
  }

  // ---- Steps ----

  absl::Status BeginStep(const StepInputs& inputs) override {
    DeviceScope scope(context_->device);
    bool moved = false;
    RETURN_IF_ERROR(arrays_->BeginStep(inputs, &moved));
    if (moved && graphs_ != nullptr) graphs_->Clear();  // recordings read the old step buffer
    if (inputs.layout != nullptr && inputs.latent_cache != nullptr) {
      RETURN_IF_ERROR(attention_->Prepare(*inputs.layout, inputs.attention_heads, inputs.latent_rank,
                                          inputs.rope_dim, inputs.latent_cache->dim(0)));
    }
    return absl::OkStatus();
  }

  void EndStep() override {
    arrays_->EndStep();
    attention_->EndStep();
  }

  absl::StatusOr<Tensor> RunStep(const std::function<absl::StatusOr<Tensor>()>& forward) override {
    if (graphs_ == nullptr || !arrays_->in_step()) return forward();
    attention_->set_launch_only(true);
    absl::StatusOr<Tensor> output = graphs_->Run(StepKey(), forward);
    attention_->set_launch_only(false);
    return output;
  }

 private:
  // While a step is being recorded, ops must not upload or synchronize.
  bool capturing() const { return graphs_ != nullptr && graphs_->capturing(); }

  // The device copy of `values` (see DeviceArrays::Get).
  template <typename T>
  absl::StatusOr<const T*> DeviceArray(absl::Span<const T> values) {
    return arrays_->Get(values, capturing());
  }
  absl::StatusOr<const char*> UploadMeta(const MetaPack& pack) { return arrays_->Upload(pack, capturing()); }

  // Everything a recorded step's launches depend on besides the weights'
  // and cache's contents.
  uint64_t StepKey() const {
    const StepInputs& in = arrays_->step_inputs();
    // A recording bakes in the cache's address and geometry (a new cache may reuse the address).
    const Tensor* cache = in.latent_cache;
    return absl::HashOf(in.token_ids.size(), in.positions.size(), in.slots.size(), in.logit_rows.size(), in.model_id,
                        arrays_->step_buffer(), cache != nullptr ? cache->data : nullptr,
                        cache != nullptr ? cache->shape : std::vector<int64_t>{}, attention_->LaunchSignature());
  }

  cudaStream_t stream() const { return context_->stream; }

  static absl::StatusOr<cudaDataType_t> OutputType(absl::string_view op, const Tensor& out) {
    if (out.dtype == DType::kBF16) return CUDA_R_16BF;
    if (out.dtype == DType::kF32) return CUDA_R_32F;
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": out has dtype ", std::string(DTypeName(out.dtype)), ", expected BF16 or F32"));
  }

  // `t` as float32 on the device (a converted copy when it is bf16).
  absl::StatusOr<Tensor> AsF32(absl::string_view op, absl::string_view operand, const Tensor& t) {
    if (t.dtype == DType::kF32) return t;
    if (t.dtype != DType::kBF16) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": ", operand, " has dtype ",
                                                     std::string(DTypeName(t.dtype)), ", expected BF16 or F32"));
    }
    ASSIGN_OR_RETURN(Tensor f32, Empty(DType::kF32, t.shape));
    CUDA_RETURN_IF_ERROR(cuda::Bf16ToF32(Bf16(t), t.numel(), f32.as<float>(), stream()));
    return f32;
  }

  const CudaOpsOptions options_;
  std::shared_ptr<StreamContext> context_;
  std::unique_ptr<BatchInvariantGemm> gemm_;
  std::unique_ptr<PinnedUpload> upload_;  // made at the first UploadBytes (weight loading)
  std::unique_ptr<MlaAttention> attention_;
  std::unique_ptr<DeviceArrays> arrays_;
  std::unique_ptr<StepGraphs> graphs_;
  static constexpr StepGraphStats no_graphs_{};
};

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

absl::StatusOr<std::string> CudaDeviceUuid(int device) {
  cudaDeviceProp prop;
  CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  std::string uuid;
  for (char byte : prop.uuid.bytes) absl::StrAppend(&uuid, absl::Hex(static_cast<unsigned char>(byte), absl::kZeroPad2));
  return uuid;
}

StepGraphStats GetStepGraphStats(const Ops& ops) {
  const auto* cuda = dynamic_cast<const CudaOps*>(&ops);
  return cuda != nullptr ? cuda->step_graph_stats() : StepGraphStats{};
}

absl::StatusOr<std::unique_ptr<Ops>> NewCudaOps(int device, CudaOpsOptions options) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return absl::FailedPreconditionError(absl::StrCat("no usable CUDA GPU: cudaGetDeviceCount failed: ",
                                                      cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
  }
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", device, " requested, ", count, " device(s) present"));
  }
  auto ops = std::make_unique<CudaOps>(device, options);
  RETURN_IF_ERROR(ops->Init());
  return std::unique_ptr<Ops>(std::move(ops));
}

absl::StatusOr<DeviceMemory> CudaMemoryInfo(int device) {
  DeviceScope scope(device);  // cudaMemGetInfo reads the current device
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  return DeviceMemory{static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes)};
}

absl::Status CudaReleaseCachedMemory(int device) {
  DeviceScope scope(device);
  CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  cudaMemPool_t pool;
  CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&pool, device));
  CUDA_RETURN_IF_ERROR(cudaMemPoolTrimTo(pool, 0));
  return absl::OkStatus();
}

}  // namespace mlaserve
