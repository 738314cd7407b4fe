// The op interface the model is written against (one interface, one
// implementation per backend, as in llama.cpp). `kernels/cpu` is the float32
// reference; `kernels/cuda` the Hopper implementation tested against it.
//
// Conventions: x is [num_tokens, ...] row-major; weights follow Hugging Face's
// [out_features, in_features]; every output tensor is allocated by the caller
// with the stated shape (use Empty()). Token metadata (ids, positions, block
// tables) comes as host arrays; a device backend uploads what it needs.
#ifndef MLASERVE_KERNELS_OPS_H_
#define MLASERVE_KERNELS_OPS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/rope_table.h"
#include "kernels/sampler.h"
#include "kernels/tensor.h"

namespace mlaserve {

// A block table's entry for a block another rank holds (decode context
// parallelism shards a sequence's blocks over the ranks of a replica), and
// the cache slot of a token in such a block: writes skip it, the absorbed
// attention's part reads only the blocks held here.
constexpr int32_t kBlockElsewhere = -1;
constexpr int64_t kSlotElsewhere = -1;

// Where one sequence's tokens sit in a batch and in the paged latent cache.
// Token i of the sequence is at position context_len - num_tokens + i and
// attends causally to cache positions [0, its position].
struct SequenceSlice {
  int64_t token_begin = 0;
  int64_t num_tokens = 0;
  int64_t context_len = 0;
  std::vector<int32_t> block_table;  // cache block of positions [b*block_size, (b+1)*block_size)
};

struct AttentionLayout {
  int64_t block_size = 64;
  std::vector<SequenceSlice> seqs;
  int64_t num_tokens() const;
  // Cache slot (block * block_size + offset) of every token in batch order;
  // kSlotElsewhere for a token in a block held elsewhere.
  std::vector<int64_t> TokenSlots() const;
  std::vector<int32_t> TokenPositions() const;
};

// Routing decided for each token: `top_k` expert ids and weights per row.
struct RouterConfig {
  bool sigmoid = false;          // else softmax
  bool noaux_tc = false;         // V3 group ranking: sum of the two best biased scores
  bool group_limited = false;    // V2 group ranking: best score of the group
  int64_t num_groups = 1;
  int64_t topk_groups = 1;
  int64_t top_k = 1;
  bool normalize = false;
  float scaling = 1.0f;
};

// What every layer of one forward step reads the same way. A backend may
// keep one device copy for the whole step: an op called with one of these
// very arrays (the same memory) may read that copy instead of uploading its
// argument again. The arrays must stay alive and unchanged until EndStep.
struct StepInputs {
  absl::Span<const int32_t> token_ids;  // as passed to Embedding
  absl::Span<const int32_t> positions;  // as passed to Rope
  absl::Span<const int64_t> slots;      // as passed to WriteLatentCache
  absl::Span<const int32_t> logit_rows;  // the Embedding that gathers the rows whose logits are wanted
  const AttentionLayout* layout = nullptr;
  const Tensor* latent_cache = nullptr;  // the cache MlaAbsorbedAttention reads
  int64_t attention_heads = 0;           // q_latent's [heads, rank], q_rope's rope dim
  int64_t latent_rank = 0;
  int64_t rope_dim = 0;
  uint64_t model_id = 0;  // unique per loaded model: steps of different models never share a recording
};

class Ops {
 public:
  virtual ~Ops() = default;
  virtual std::string_view name() const = 0;
  // The element type activations and weights are stored in on this backend.
  virtual DType storage_dtype() const = 0;

  // Memory.
  virtual absl::StatusOr<Tensor> Empty(DType dtype, std::vector<int64_t> shape) = 0;
  // float32 host values into `dst` (converted to its dtype; U8 takes byte
  // values, as an FP8 latent cache moves between workers) and back.
  virtual absl::Status Upload(absl::Span<const float> src, Tensor* dst) = 0;
  virtual absl::Status Download(const Tensor& src, absl::Span<float> dst) = 0;
  virtual absl::Status Fill(Tensor* dst, float value) = 0;
  // dst.num_bytes() bytes at `src`, already in dst's dtype (checkpoint bytes
  // that need no conversion: bf16 weights on a bf16 backend, FP8 values).
  virtual absl::Status UploadBytes(const void* src, size_t num_bytes, Tensor* dst) = 0;
  // The FP8 form of weight `w` [..., K] (storage dtype): e4m3 values with a
  // scale per row and 128-column group (see Linear), made on the backend.
  virtual absl::StatusOr<Tensor> QuantizeFp8(const Tensor& w) = 0;
  // dst[i] = mean + stddev * RandomNormal(seed, i) (kernels/random_normal.h),
  // generated where dst lives: random-weights models without a checkpoint,
  // identical on every backend up to the storage dtype's rounding.
  virtual absl::Status FillRandom(Tensor* dst, uint64_t seed, float mean, float stddev) = 0;
  virtual absl::Status Synchronize() = 0;

  // out[t] = table[ids[t]].
  virtual absl::Status Embedding(const Tensor& table, absl::Span<const int32_t> ids, Tensor* out) = 0;
  // out = x / rms(x) * weight, per row.
  virtual absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor* out) = 0;
  // residual += x; out = RmsNorm(residual).
  virtual absl::Status AddRmsNorm(Tensor* residual, const Tensor& x, const Tensor& weight, float eps,
                                  Tensor* out) = 0;
  // out[T, N] = x[T, K] * w[N, K]^T.
  // With an FP8 weight (F8E4M3 with `scale`, K a multiple of 16) the product
  // is DeepSeek-V3's: each row of x is quantized per 128-column group g
  // (s = max(amax, 1e-4) / 448, q = e4m3(x / s), ties to even) and
  // out[t, n] = sum over g of (sum over k in g of q_x[t, k] q_w[n, k]) * (s_x[t, g] * s_w[n, g]).
  virtual absl::Status Linear(const Tensor& x, const Tensor& w, Tensor* out) = 0;
  // Per head h: out[T, h, N] = x[T, h, K] * w[h, N, K]^T.
  virtual absl::Status HeadLinear(const Tensor& x, const Tensor& w, Tensor* out) = 0;
  // Rotates x[T, H, rope_dim] in place at each token's position.
  virtual absl::Status Rope(Tensor* x, absl::Span<const int32_t> positions, const RopeTable& table) = 0;
  // a += b.
  virtual absl::Status Add(Tensor* a, const Tensor& b) = 0;
  // dst[rows[i]] += src[i] for every row i of src [n, D]; rows may repeat
  // (the combine step of expert parallelism).
  virtual absl::Status AddRows(const Tensor& src, absl::Span<const int32_t> rows, Tensor* dst) = 0;
  // out[T, I] = silu(x[T, :I]) * x[T, I:], x is [T, 2I].
  virtual absl::Status SiluMul(const Tensor& x, Tensor* out) = 0;

  // Latent caches are [num_blocks, num_layers, block_size, width]: rows of
  // c_kv ++ k_rope in the storage dtype, or FP8 rows (kernels/latent_row.h).
  // Every cache op takes either form.
  //
  // Stores each token's c_kv [T, kv_lora_rank] and k_rope [T, rope_dim] into
  // `cache` at layer `layer` (quantized, in an FP8 cache); tokens whose slot
  // is kSlotElsewhere are skipped.
  virtual absl::Status WriteLatentCache(const Tensor& c_kv, const Tensor& k_rope,
                                        absl::Span<const int64_t> slots, int64_t layer,
                                        Tensor* cache) = 0;
  // Copies a sequence's first `num_positions` cache rows of `layer` into
  // c_kv [num_positions, kv_lora_rank] and k_rope [num_positions, rope_dim]
  // (the expanded form's input), dequantized from an FP8 cache.
  virtual absl::Status GatherLatent(const Tensor& cache, int64_t layer,
                                    absl::Span<const int32_t> block_table, int64_t num_positions,
                                    Tensor* c_kv, Tensor* k_rope) = 0;
  // Absorbed MLA: q_latent[T, H, rank] and q_rope[T, H, rope] attend to the
  // latent cache (an FP8 cache's rows as they dequantize); out[T, H, rank] is
  // the attention-weighted sum of c_kv. Only
  // the rows of the layout's sequences are read and written: a step whose
  // other sequences take the expanded form passes a layout without them.
  // REQUIRES: every sequence's rows lie within T.
  virtual absl::Status MlaAbsorbedAttention(const Tensor& q_latent, const Tensor& q_rope,
                                            const Tensor& cache, int64_t layer,
                                            const AttentionLayout& layout, float softmax_scale,
                                            Tensor* out) = 0;
  // Decode context parallelism's share of MlaAbsorbedAttention: the same
  // attention over only the keys of the table's blocks held here (entries
  // kBlockElsewhere are skipped), and lse[T, H] (F32), the log of the sum of
  // exp(scaled score) over those keys: -inf, with out zero, where a query
  // sees none. CombineAttentionParts makes the whole from the parts.
  virtual absl::Status MlaAbsorbedAttentionPart(const Tensor& q_latent, const Tensor& q_rope, const Tensor& cache,
                                                int64_t layer, const AttentionLayout& layout, float softmax_scale,
                                                Tensor* out, Tensor* lse) = 0;
  // out[T, H, D] = sum over p of parts[p] * exp(lse[p] - L) with L the log of
  // the sum over p of exp(lse[p]): attention over the union of the parts'
  // keys from the parts [P, T, H, D] and their lse [P, T, H] (F32).
  virtual absl::Status CombineAttentionParts(const Tensor& parts, const Tensor& lse, Tensor* out) = 0;
  // Whether the two ops above are implemented here (else they fail with
  // Unimplemented), as ggml backends say which ops they support.
  virtual bool AttendsInParts() const = 0;
  // Expanded MLA for one sequence, heads [first_head, first_head + H) of
  // q_nope[T, Hq, nope] and q_rope[T, Hq, rope] against k_nope[S, H, nope],
  // k_rope[S, rope] (shared by heads) and v[S, H, dv] (those heads' keys and
  // values); query t sits at position S - T + t and sees keys [0, that
  // position]. Writes those heads of out[T, Hq, dv] and no others, so that a
  // caller may expand K and V a group of heads at a time.
  // REQUIRES: 0 <= first_head and first_head + H <= Hq.
  virtual absl::Status MlaExpandedAttention(const Tensor& q_nope, const Tensor& q_rope,
                                            const Tensor& k_nope, const Tensor& k_rope,
                                            const Tensor& v, int64_t first_head, float softmax_scale,
                                            Tensor* out) = 0;
  // Router: scores from logits[T, E] (+ bias[E] for selection only when
  // `bias` is given) into topk_ids[T, k] (I32) and topk_weights[T, k] (F32).
  virtual absl::Status MoeRoute(const Tensor& logits, const Tensor* bias, const RouterConfig& config,
                                Tensor* topk_ids, Tensor* topk_weights) = 0;
  // out[T, D] = sum over k of topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]),
  // expert e being down[e] * SiluMul(gate_up[e] * x); experts are numbered
  // from `first_expert` (a shard owns a contiguous range); ids outside the
  // range are skipped, so shards' outputs add up to the whole. FP8 experts
  // (both gate_up and down) multiply as Linear does, the SiLU-gated
  // activations quantized in turn.
  virtual absl::Status MoeExperts(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                                  const Tensor& gate_up, const Tensor& down, int64_t first_expert,
                                  Tensor* out) = 0;

  // One token per row of `logits` [num_shards, rows, shard_vocab] (float32
  // or the storage dtype): row r's logit of token v sits at [v / shard_vocab,
  // r, v % shard_vocab], the vocabulary slices of tensor-parallel ranks side
  // by side (one shard when unsharded); tokens at or past `vocab` are
  // padding. Row r samples with params[r] and draw sample_indices[r] by the
  // rule of kernels/sampler.h, so every backend picks the same tokens from
  // the same logits. Only the tokens come back to the host.
  virtual absl::Status SampleTokens(const Tensor& logits, int64_t vocab, absl::Span<const SamplerParams> params,
                                    absl::Span<const int64_t> sample_indices, absl::Span<int32_t> tokens) = 0;

  // Brackets one forward step (see StepInputs); a step's ops come between.
  virtual absl::Status BeginStep(const StepInputs&) { return absl::OkStatus(); }
  virtual void EndStep() {}
  // Runs `forward`, which enqueues the whole forward pass of the current
  // step and returns its output. A backend that records steps (CUDA graphs)
  // may instead replay its recording of an earlier step of the same shape
  // and not call `forward` at all, so `forward` must do nothing but enqueue
  // ops on this backend: no host round trip, no collective. The output must
  // be released before the next step.
  virtual absl::StatusOr<Tensor> RunStep(const std::function<absl::StatusOr<Tensor>()>& forward) {
    return forward();
  }
};

// The reference backend (always available).
std::unique_ptr<Ops> NewCpuOps();

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_OPS_H_
