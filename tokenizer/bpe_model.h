// The BPE model of a `tokenizer.json`: vocabulary, ranked merges and the
// options `tokenizers` supports (unknown token, byte fallback, subword
// affixes, ignore_merges). It turns one pre-tokenized word into ids. The
// model owns its tables, which are immutable after FromJson; the only mutable
// state is a bounded cache of merged words behind a mutex, so Tokenize may be
// called from any number of threads.
#ifndef MLASERVE_TOKENIZER_BPE_MODEL_H_
#define MLASERVE_TOKENIZER_BPE_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json_fwd.hpp"

namespace mlaserve::tokenizer_internal {

class BpeModel {
 public:
  // `config` is the "model" object of tokenizer.json.
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& config);

  // Appends the ids of one pre-tokenized word.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The vocabulary entry of `id`; nullptr when there is none.
  const std::string* IdToToken(int32_t id) const;
  int32_t max_id() const { return max_id_; }

 private:
  static constexpr size_t kCacheCapacity = 10000;
  static constexpr size_t kMaxCachedWordBytes = 256;

  struct MergeTarget {
    int32_t rank;
    int32_t new_id;
  };
  struct Symbol {
    int32_t id;
    int prev;
    int next;
    size_t len;  // bytes of the word it covers; 0 once merged away
  };

  BpeModel() = default;

  absl::Status ReadVocab(const nlohmann::json& config);
  absl::Status ReadOptions(const nlohmann::json& config);
  absl::Status ReadMerges(const nlohmann::json& config);
  const MergeTarget* FindMerge(int32_t a, int32_t b) const;
  std::vector<Symbol> InitialSymbols(std::string_view word) const;
  void MergeAll(std::vector<Symbol>* symbols) const;
  std::vector<int32_t> MergeWord(std::string_view word) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  absl::flat_hash_map<int32_t, std::string> vocab_r_;
  absl::flat_hash_map<uint64_t, MergeTarget> merges_;  // keyed by the pair of ids
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  int32_t max_id_ = -1;

  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace mlaserve::tokenizer_internal

#endif  // MLASERVE_TOKENIZER_BPE_MODEL_H_
