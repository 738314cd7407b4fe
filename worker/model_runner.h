// Runs whole sequences through a Model on its own paged cache: scoring a
// prompt (logits at every position) and greedy generation with prefill in
// chunks followed by one-token decode steps over the cache. It owns the
// sequence's blocks for the duration of a call and frees them before
// returning. The serving stack schedules many sequences itself; this is the
// single-sequence engine of the CLI and of the reference tests.
#ifndef MLASERVE_WORKER_MODEL_RUNNER_H_
#define MLASERVE_WORKER_MODEL_RUNNER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/kv_cache.h"
#include "worker/model.h"

namespace mlaserve {

struct RunnerOptions {
  int64_t prefill_chunk_tokens = 0;  // 0: the whole prompt in one step
  AttentionForm attention_form = AttentionForm::kCheapest;
};

class ModelRunner {
 public:
  ModelRunner(Model& model, KvCache& cache, RunnerOptions options = {});

  // Logits [ids.size(), vocab] of every position of `ids`.
  absl::StatusOr<std::vector<float>> Score(absl::Span<const int32_t> ids);
  // Greedy continuation of `prompt`: `max_new_tokens` ids (stops early only at
  // one of `stop_ids`, which is included).
  absl::StatusOr<std::vector<int32_t>> GenerateGreedy(absl::Span<const int32_t> prompt, int64_t max_new_tokens,
                                                      absl::Span<const int32_t> stop_ids = {});

 private:
  // Appends `ids` to the sequence held in `seq`, growing its block table, and
  // returns the logits of the rows in `logit_rows` (relative to `ids`).
  absl::StatusOr<std::vector<float>> Extend(SequenceSlice& seq, absl::Span<const int32_t> ids,
                                            const std::vector<int64_t>& logit_rows);
  absl::StatusOr<std::vector<float>> Prefill(SequenceSlice& seq, absl::Span<const int32_t> ids, bool all_logits);

  Model& model_;
  KvCache& cache_;
  RunnerOptions options_;
};

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_MODEL_RUNNER_H_
