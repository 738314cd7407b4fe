#include "worker/model_runner.h"

#include <algorithm>
#include <numeric>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mlaserve {

ModelRunner::ModelRunner(Model& model, KvCache& cache, RunnerOptions options)
    : model_(model), cache_(cache), options_(options) {}

absl::StatusOr<std::vector<float>> ModelRunner::Extend(SequenceSlice& seq, absl::Span<const int32_t> ids,
                                                       const std::vector<int64_t>& logit_rows) {
  const int64_t new_len = seq.context_len + static_cast<int64_t>(ids.size());
  const int64_t missing = BlocksFor(new_len, cache_.block_size()) - static_cast<int64_t>(seq.block_table.size());
  if (missing > 0) {
    ASSIGN_OR_RETURN(std::vector<int32_t> blocks, cache_.Allocate(missing));
    seq.block_table.insert(seq.block_table.end(), blocks.begin(), blocks.end());
  }
  seq.token_begin = 0;
  seq.num_tokens = static_cast<int64_t>(ids.size());
  seq.context_len = new_len;
  ForwardBatch batch;
  batch.token_ids.assign(ids.begin(), ids.end());
  batch.layout.block_size = cache_.block_size();
  batch.layout.seqs.push_back(seq);
  batch.logit_rows = logit_rows;
  return model_.Forward(batch, cache_, options_.attention_form);
}

absl::StatusOr<std::vector<float>> ModelRunner::Prefill(SequenceSlice& seq, absl::Span<const int32_t> ids,
                                                        bool all_logits) {
  if (ids.empty()) return absl::InvalidArgumentError("empty prompt");
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t chunk = options_.prefill_chunk_tokens > 0 ? options_.prefill_chunk_tokens : n;
  std::vector<float> logits;
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t count = std::min(chunk, n - begin);
    std::vector<int64_t> rows;
    if (all_logits) {
      rows.resize(count);
      std::iota(rows.begin(), rows.end(), 0);
    } else if (begin + count == n) {
      rows.push_back(count - 1);
    }
    ASSIGN_OR_RETURN(std::vector<float> chunk_logits, Extend(seq, ids.subspan(begin, count), rows));
    logits.insert(logits.end(), chunk_logits.begin(), chunk_logits.end());
  }
  return logits;
}

absl::StatusOr<std::vector<float>> ModelRunner::Score(absl::Span<const int32_t> ids) {
  SequenceSlice seq;
  absl::Cleanup free_blocks = [&] { cache_.Free(seq.block_table).IgnoreError(); };
  return Prefill(seq, ids, /*all_logits=*/true);
}

absl::StatusOr<std::vector<int32_t>> ModelRunner::GenerateGreedy(absl::Span<const int32_t> prompt,
                                                                 int64_t max_new_tokens,
                                                                 absl::Span<const int32_t> stop_ids) {
  SequenceSlice seq;
  absl::Cleanup free_blocks = [&] { cache_.Free(seq.block_table).IgnoreError(); };
  std::vector<int32_t> out;
  if (max_new_tokens <= 0) return out;
  ASSIGN_OR_RETURN(std::vector<float> logits, Prefill(seq, prompt, /*all_logits=*/false));
  while (true) {
    const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    const bool stop = std::find(stop_ids.begin(), stop_ids.end(), next) != stop_ids.end();
    if (stop || static_cast<int64_t>(out.size()) == max_new_tokens) break;
    ASSIGN_OR_RETURN(logits, Extend(seq, absl::MakeConstSpan(&out.back(), 1), {0}));
  }
  return out;
}

}  // namespace mlaserve
