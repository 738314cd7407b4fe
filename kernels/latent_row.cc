#include "kernels/latent_row.h"

#include "absl/strings/str_cat.h"

namespace mlaserve {

absl::StatusOr<KvCacheDtype> ParseKvCacheDtype(absl::string_view name) {
  if (name == "auto" || name == "bf16" || name.empty()) return KvCacheDtype::kStorage;
  if (name == "fp8") return KvCacheDtype::kFp8;
  return absl::InvalidArgumentError(absl::StrCat("KV cache dtype \"", name, "\" is not one of auto, bf16, fp8"));
}

int64_t LatentRowBytes(int64_t rank, int64_t rope, int64_t storage_bytes, KvCacheDtype dtype) {
  return dtype == KvCacheDtype::kFp8 ? Fp8LatentRow{rank, rope}.bytes() : (rank + rope) * storage_bytes;
}

}  // namespace mlaserve
