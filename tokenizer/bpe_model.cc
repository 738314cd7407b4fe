#include "tokenizer/bpe_model.h"

#include <algorithm>
#include <limits>
#include <queue>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "tokenizer/tokenizer_json.h"
#include "nlohmann/json.hpp"

namespace mlaserve::tokenizer_internal {
namespace {

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// The merges as (left, right) pairs, in rank order; both the "left right"
// string form and the [left, right] array form are accepted.
absl::Status ParseMerges(const json& list, const std::string& prefix,
                         std::vector<std::pair<std::string, std::string>>* merges) {
  for (size_t i = 0; i < list.size(); ++i) {
    const json& entry = list[i];
    const std::string path = absl::StrCat("model.merges[", i, "]");
    if (entry.is_string()) {
      const std::string line = entry.get<std::string>();
      if (line.starts_with("#version")) continue;
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        return Invalid(path, "expected \"left right\"");
      }
      merges->emplace_back(line.substr(0, space), line.substr(space + 1));
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
               entry[1].is_string()) {
      merges->emplace_back(entry[0].get<std::string>(), entry[1].get<std::string>());
    } else {
      return Invalid(path, "expected \"left right\" or [\"left\", \"right\"]");
    }
    if (merges->back().second.size() < prefix.size()) {
      return Invalid(path, "right side shorter than continuing_subword_prefix");
    }
  }
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const json& config) {
  if (!config.is_object()) return Invalid("model", "expected an object");
  ASSIGN_OR_RETURN(const std::optional<std::string> type, StringMember(config, "type", "model"));
  if (type.has_value() && *type != "BPE") {
    return Invalid("model.type",
                   absl::StrCat("unsupported model type \"", *type, "\" (only BPE is supported)"));
  }
  if (const json* dropout = Member(config, "dropout");
      dropout != nullptr && (!dropout->is_number() || dropout->get<double>() > 0)) {
    return Invalid("model.dropout",
                   "BPE dropout is not supported (encoding must be deterministic)");
  }
  auto model = absl::WrapUnique(new BpeModel);
  RETURN_IF_ERROR(model->ReadVocab(config));
  RETURN_IF_ERROR(model->ReadOptions(config));
  RETURN_IF_ERROR(model->ReadMerges(config));
  return model;
}

absl::Status BpeModel::ReadVocab(const json& config) {
  const json* vocab = Member(config, "vocab");
  if (vocab == nullptr || !vocab->is_object()) return Invalid("model.vocab", "expected an object");
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return Invalid("model.vocab", absl::StrCat("bad id for token \"", token, "\""));
    }
    const auto value = static_cast<int32_t>(id.get<int64_t>());
    vocab_[token] = value;
    vocab_r_[value] = token;
    max_id_ = std::max(max_id_, value);
  }
  return absl::OkStatus();
}

absl::Status BpeModel::ReadOptions(const json& config) {
  ASSIGN_OR_RETURN(const std::optional<std::string> prefix,
                   StringMember(config, "continuing_subword_prefix", "model"));
  ASSIGN_OR_RETURN(const std::optional<std::string> suffix,
                   StringMember(config, "end_of_word_suffix", "model"));
  continuing_subword_prefix_ = prefix.value_or("");
  end_of_word_suffix_ = suffix.value_or("");
  ASSIGN_OR_RETURN(fuse_unk_, BoolMember(config, "fuse_unk", false, "model"));
  ASSIGN_OR_RETURN(byte_fallback_, BoolMember(config, "byte_fallback", false, "model"));
  ASSIGN_OR_RETURN(ignore_merges_, BoolMember(config, "ignore_merges", false, "model"));
  ASSIGN_OR_RETURN(const std::optional<std::string> unk,
                   StringMember(config, "unk_token", "model"));
  if (unk) {
    unk_id_ = TokenToId(*unk);
    if (!unk_id_) return Invalid("model.unk_token", "not in the vocabulary");
  }
  return absl::OkStatus();
}

absl::Status BpeModel::ReadMerges(const json& config) {
  ASSIGN_OR_RETURN(const json* list, ArrayMember(config, "merges", "model"));
  std::vector<std::pair<std::string, std::string>> merges;
  RETURN_IF_ERROR(ParseMerges(*list, continuing_subword_prefix_, &merges));
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const std::string merged = absl::StrCat(left, right.substr(continuing_subword_prefix_.size()));
    const std::optional<int32_t> a = TokenToId(left);
    const std::optional<int32_t> b = TokenToId(right);
    const std::optional<int32_t> c = TokenToId(merged);
    if (!a || !b || !c) {
      return Invalid(
          absl::StrCat("model.merges[", rank, "]"),
          absl::StrCat("merge \"", left, " ", right, "\" uses a token not in the vocabulary"));
    }
    // A repeated pair takes its last rank, as tokenizers' HashMap collect does.
    merges_[PairKey(*a, *b)] = {static_cast<int32_t>(rank), *c};
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Lookups
// ---------------------------------------------------------------------------

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  const auto it = vocab_.find(Sv(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  const auto it = vocab_r_.find(id);
  return it == vocab_r_.end() ? nullptr : &it->second;
}

const BpeModel::MergeTarget* BpeModel::FindMerge(int32_t a, int32_t b) const {
  const auto it = merges_.find(PairKey(a, b));
  return it == merges_.end() ? nullptr : &it->second;
}

// ---------------------------------------------------------------------------
// Tokenizing a word
// ---------------------------------------------------------------------------

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (ignore_merges_) {
    if (const auto it = vocab_.find(Sv(word)); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&cache_mu_);
    if (const auto it = cache_.find(Sv(word)); it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> word_ids = MergeWord(word);
  ids->insert(ids->end(), word_ids.begin(), word_ids.end());
  if (cacheable) {
    absl::MutexLock lock(&cache_mu_);
    if (cache_.size() < kCacheCapacity) cache_.try_emplace(std::string(word), std::move(word_ids));
  }
}

std::vector<int32_t> BpeModel::MergeWord(std::string_view word) const {
  std::vector<Symbol> symbols = InitialSymbols(word);
  MergeAll(&symbols);
  std::vector<int32_t> ids;
  for (const Symbol& s : symbols) {
    if (s.len != 0) ids.push_back(s.id);
  }
  return ids;
}

// One symbol per character (with the subword prefix/suffix), as BPE's
// merge_word: unknown characters become byte-fallback tokens, the unknown
// token, or nothing when neither exists.
std::vector<BpeModel::Symbol> BpeModel::InitialSymbols(std::string_view word) const {
  std::vector<Symbol> symbols;
  size_t unk_len = 0;  // bytes covered by an unknown token not yet added
  const auto add = [&symbols](int32_t id, size_t len) {
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({id, index - 1, index + 1, len});
  };
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = Utf8CharLength(word, pos);
    std::string piece(word.substr(pos, len));
    if (pos > 0) piece.insert(0, continuing_subword_prefix_);
    if (pos + len == word.size()) piece += end_of_word_suffix_;
    pos += len;
    if (const auto it = vocab_.find(piece); it != vocab_.end()) {
      if (unk_len > 0) add(*unk_id_, unk_len);
      unk_len = 0;
      add(it->second, len);
      continue;
    }
    if (byte_fallback_) {
      std::vector<int32_t> bytes;
      for (unsigned char b : piece) {
        const auto it = vocab_.find(absl::StrFormat("<0x%02X>", b));
        if (it == vocab_.end()) break;
        bytes.push_back(it->second);
      }
      if (bytes.size() == piece.size()) {
        for (int32_t id : bytes) add(id, 1);
        continue;
      }
    }
    if (!unk_id_) continue;
    if (unk_len > 0 && fuse_unk_) {
      unk_len += len;
      continue;
    }
    if (unk_len > 0) add(*unk_id_, unk_len);
    unk_len = len;
  }
  if (unk_len > 0) add(*unk_id_, unk_len);
  if (!symbols.empty()) symbols.back().next = -1;
  return symbols;
}

// tokenizers' Word::merge_all: repeatedly applies the best-ranked merge (the
// leftmost among equals) through a priority queue with lazy invalidation.
void BpeModel::MergeAll(std::vector<Symbol>* symbols) const {
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator<(const Candidate& o) const {  // inverted: a min-heap
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Symbol>& s = *symbols;
  std::priority_queue<Candidate> queue;
  for (int i = 0; i + 1 < static_cast<int>(s.size()); ++i) {
    if (const MergeTarget* m = FindMerge(s[i].id, s[i + 1].id)) {
      queue.push({m->rank, i, m->new_id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = s[top.pos];
    if (left.len == 0 || left.next == -1) continue;
    const Symbol right = s[left.next];
    const MergeTarget* m = FindMerge(left.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;  // a stale entry

    s[left.next].len = 0;
    left.id = top.new_id;
    left.len += right.len;
    left.next = right.next;
    if (right.next != -1) s[right.next].prev = top.pos;

    if (left.prev >= 0) {
      if (const MergeTarget* pm = FindMerge(s[left.prev].id, left.id)) {
        queue.push({pm->rank, left.prev, pm->new_id});
      }
    }
    if (left.next != -1) {
      if (const MergeTarget* nm = FindMerge(left.id, s[left.next].id)) {
        queue.push({nm->rank, top.pos, nm->new_id});
      }
    }
  }
}

}  // namespace mlaserve::tokenizer_internal
