// How one token's latent KV of one layer lies in a cache row. A cache in the
// storage dtype holds c_kv ++ k_rope as computed. An FP8 cache
// (--kv_cache_dtype fp8) is a U8 tensor [num_blocks, num_layers, block_size,
// Fp8LatentRow::bytes()] whose rows hold
//   c_kv as e4m3 with one float32 scale per 128-column group, quantized by the
//     rule of FP8 activations (kernels/ops.h, Linear: scale = max(amax, 1e-4)
//     / 448, ties to even), so a value reads back as e4m3 * scale;
//   k_rope in bf16: it carries the position and is a ninth of the row, so it
//     is kept as a GPU computes it (DeepSeek's FP8 cache keeps it so too).
// Each part starts 16-byte aligned for the kernels' 16-byte loads. At
// DeepSeek's dims (rank 512, rope 64) a row is 656 bytes against 1,152 in bf16.
#ifndef MLASERVE_KERNELS_LATENT_ROW_H_
#define MLASERVE_KERNELS_LATENT_ROW_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/tensor.h"

namespace mlaserve {

// What a cache row holds (--kv_cache_dtype): the latents in the backend's
// storage dtype as computed ("auto" or "bf16"; the CPU reference keeps
// float32), or FP8 rows ("fp8").
enum class KvCacheDtype { kStorage, kFp8 };
absl::StatusOr<KvCacheDtype> ParseKvCacheDtype(absl::string_view name);

struct Fp8LatentRow {
  int64_t rank = 0;
  int64_t rope = 0;

  static constexpr int64_t RoundUp16(int64_t n) { return (n + 15) / 16 * 16; }
  int64_t scales_offset() const { return RoundUp16(rank); }
  int64_t rope_offset() const { return RoundUp16(scales_offset() + 4 * Fp8Groups(rank)); }
  int64_t bytes() const { return RoundUp16(rope_offset() + 2 * rope); }
};

// The bytes one token's latent KV takes per layer in a cache of `dtype` on a
// backend storing `storage_bytes`-byte values.
int64_t LatentRowBytes(int64_t rank, int64_t rope, int64_t storage_bytes, KvCacheDtype dtype);

// Whether `cache` is in the FP8 form above (else it holds the storage dtype).
inline bool IsFp8LatentCache(const Tensor& cache) { return cache.dtype == DType::kU8; }

// The last dimension of a latent cache of `rank` + `rope` in either form.
inline int64_t LatentRowWidth(const Tensor& cache, int64_t rank, int64_t rope) {
  return IsFp8LatentCache(cache) ? Fp8LatentRow{rank, rope}.bytes() : rank + rope;
}

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_LATENT_ROW_H_
