// One request as the scheduler tracks it: its tokens (prompt, then output),
// how many of them have KV in the cache, its block table, sampling state and
// detokenizer. Owned by the engine group that serves it; touched only under
// that group's lock.
#ifndef MLASERVE_COORDINATOR_SERVING_SEQUENCE_H_
#define MLASERVE_COORDINATOR_SERVING_SEQUENCE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "coordinator/serving/block_manager.h"
#include "coordinator/serving/request.h"
#include "tokenizer/detokenizer.h"

namespace mlaserve {

// Stands in a sequence's tokens for a sample launched but not yet known.
inline constexpr int32_t kPendingToken = -1;

struct Sequence {
  int64_t id = 0;
  int replica = 0;  // the attention replica of its engine group holding its KV
  SamplingOptions sampling;
  uint64_t seed = 0;  // the request's seed, or one drawn at submission
  // Prompt followed by output; the last `pending_samples` are kPendingToken.
  std::vector<int32_t> tokens;
  int64_t prompt_len = 0;
  int64_t num_computed = 0;     // leading tokens whose KV is in the cache or being computed
  // Leading tokens whose KV a step that came back wrote: known when the
  // sample it returned arrives (a step computing up to position p samples p).
  int64_t num_written = 0;
  int64_t pending_samples = 0;  // samples launched and not yet known
  bool last_sample_launched = false;  // a launched sample will end it: schedule no more
  // What its group's workers know of it: whether they hold its state, and
  // how many leading entries of block_table they have.
  bool on_workers = false;
  int64_t blocks_on_workers = 0;
  int64_t cached_prompt_tokens = 0;  // served by the prefix cache at first admission
  bool admitted_before = false;
  int failovers = 0;  // times its group failed under it and it went on elsewhere
  std::vector<int32_t> block_table;
  // The last walk of its replica's prefix index for its tokens (routing's, or
  // the last admission's): the next one resumes from it.
  PrefixMatch prefix_match;
  std::unique_ptr<Detokenizer> detokenizer;  // null: ids only, no text (the cluster simulator's)
  UpdateCallback on_update;
  absl::Time arrival;
  absl::Time first_token_time = absl::InfiniteFuture();
  FinishReason finish_reason = FinishReason::kNone;

  // Output tokens, known or pending.
  int64_t num_output() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
  // Output tokens known so far.
  int64_t num_known_output() const { return num_known() - prompt_len; }
  // Leading tokens that are known (not placeholders).
  int64_t num_known() const { return static_cast<int64_t>(tokens.size()) - pending_samples; }
  // Tokens still to run through the model before the next sample.
  int64_t num_to_compute() const { return static_cast<int64_t>(tokens.size()) - num_computed; }
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_SEQUENCE_H_
