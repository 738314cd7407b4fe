#include "worker/memory_profile.h"

#include <algorithm>

#include "common/status_macros.h"
#include "worker/kv_cache.h"

namespace mlaserve {

absl::StatusOr<int64_t> RunLargestStep(Model& model, Ops& ops, int64_t block_size, KvCacheDtype kv_dtype,
                                       const StepShape& shape) {
  const int64_t tokens = std::max<int64_t>(2, shape.max_tokens);
  const int64_t sequences = std::clamp<int64_t>(shape.max_sequences, 1, tokens - 1);
  const int64_t prefill = tokens - (sequences - 1);
  const int64_t prefill_blocks = BlocksFor(prefill, block_size);
  int64_t scratch_bytes = 0;
  {
    ASSIGN_OR_RETURN(KvCache scratch,
                     KvCache::Create(ops, model.config(), prefill_blocks + sequences - 1, block_size, kv_dtype));
    scratch_bytes = scratch.bytes_per_block() * scratch.num_blocks();
    ForwardBatch batch;
    batch.token_ids.assign(tokens, 0);
    batch.layout.block_size = block_size;
    SequenceSlice first{.token_begin = 0, .num_tokens = prefill, .context_len = prefill};
    for (int32_t b = 0; b < prefill_blocks; ++b) first.block_table.push_back(b);
    batch.layout.seqs.push_back(std::move(first));
    batch.logit_rows.push_back(prefill - 1);
    for (int64_t s = 1; s < sequences; ++s) {
      const int64_t row = prefill + s - 1;
      batch.layout.seqs.push_back(SequenceSlice{.token_begin = row,
                                                .num_tokens = 1,
                                                .context_len = 1,
                                                .block_table = {static_cast<int32_t>(prefill_blocks + s - 1)}});
      batch.logit_rows.push_back(row);
    }
    ASSIGN_OR_RETURN(const Tensor logits, model.ForwardLogits(batch, scratch));
    RETURN_IF_ERROR(ops.Synchronize());
  }
  RETURN_IF_ERROR(ops.Synchronize());  // the frees, in stream order
  return scratch_bytes;
}

}  // namespace mlaserve
