// Which of MLA's two forms computes a sequence's attention in a step.
//
// Absorbed: W_UK folds into the query and W_UV into the output, and attention
// reads only the latent cache: per (query, key) pair it costs
// 2 (rank + rope + rank) FLOPs, 2,176 at DeepSeek's dims, and nothing per key.
// Expanded: K and V are up-projected per head from the latent rows of the
// whole context (one GEMM of 2 rank (nope + dv) FLOPs per key and head, once
// per chunk), after which a pair costs 2 (nope + rope + dv), 640 at
// DeepSeek's dims. Decode (one query per key pass) is cheapest absorbed; a
// prompt chunk of a few hundred tokens or more (fewer with more heads: the
// expanded kernel fills the GPU with queries x heads) is cheapest expanded.
// Both give the same attention up to rounding.
#ifndef MLASERVE_WORKER_ATTENTION_FORM_H_
#define MLASERVE_WORKER_ATTENTION_FORM_H_

#include <cstdint>

#include "common/model_config.h"

namespace mlaserve {

// kAbsorbed and kExpanded force one form on every sequence of a step (tests
// compare them); kCheapest takes for each sequence the form
// ExpandedIsCheaper picks, and is what serving runs.
enum class AttentionForm { kAbsorbed, kExpanded, kCheapest };

// The most bytes the expanded form's scratch takes at once by default: the
// context's latent rows gathered from the cache, plus the K and V of one
// group of heads. Longer contexts expand fewer heads at a time; workers
// reserve it beside their largest step's activations.
inline constexpr int64_t kDefaultExpandedScratchBytes = int64_t{1} << 30;

// Whether the expanded form computes the attention of a sequence's
// `num_tokens` new tokens over its `context_len` positions (the new ones
// last) in less time than the absorbed form at `config`'s dims, expanding
// `group_heads` heads at a time: by the FLOPs each form does over the rates
// its kernels reach (docs/perf.md, mla_prefill_bench), the expanded kernel's
// scaled by the share of the GPU a launch fills (a CTA per 128 queries and
// head; the absorbed kernel splits long contexts and fills it). Depends on the
// sequence alone, so a sequence takes the same form whatever else is in its
// batch.
// REQUIRES: 0 < num_tokens <= context_len and group_heads > 0.
bool ExpandedIsCheaper(const ModelConfig& config, int64_t group_heads, int64_t num_tokens, int64_t context_len);

// How many heads the expanded form expands at once for a context of
// `context_len` positions, with activations of `element_bytes` each, so
// that its scratch stays within `scratch_bytes`; the groups are as even as
// they can be. 0 when not even one head fits.
// REQUIRES: heads > 0 and context_len > 0.
int64_t ExpandedGroupHeads(const ModelConfig& config, int64_t heads, int64_t context_len, int64_t element_bytes,
                           int64_t scratch_bytes);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_ATTENTION_FORM_H_
