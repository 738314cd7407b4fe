#include "tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <ranges>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/onig_regex.h"
#include "tokenizer/tokenizer_json.h"
#include "nlohmann/json.hpp"

namespace mlaserve::tokenizer_internal {
namespace {

// ---------------------------------------------------------------------------
// Splitting (tokenizers' NormalizedString::split and its Pattern trait)
// ---------------------------------------------------------------------------

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Consecutive segments as ranges, visited in the order given: a segment
// joins the range before it when `joins(is_match, previous_is_match)`.
template <typename Segments, typename Joins>
std::vector<std::pair<size_t, size_t>> JoinSegments(const Segments& segments, Joins joins) {
  std::vector<std::pair<size_t, size_t>> out;
  bool previous_match = false;
  for (const Segment& s : segments) {
    if (joins(s.is_match, previous_match) && !out.empty()) {
      out.back() = {std::min(out.back().first, s.begin), std::max(out.back().second, s.end)};
    } else {
      out.push_back({s.begin, s.end});
    }
    previous_match = s.is_match;
  }
  return out;
}

// The ranges kept under `behavior`, in order.
std::vector<std::pair<size_t, size_t>> ApplyBehavior(const std::vector<Segment>& segments,
                                                     SplitBehavior behavior) {
  const auto match_after_gap = [](bool is_match, bool previous_match) {
    return is_match && !previous_match;
  };
  std::vector<std::pair<size_t, size_t>> out;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Segment& s : segments) out.push_back({s.begin, s.end});
      break;
    case SplitBehavior::kRemoved:
      for (const Segment& s : segments) {
        if (!s.is_match) out.push_back({s.begin, s.end});
      }
      break;
    case SplitBehavior::kContiguous:
      out = JoinSegments(segments, std::equal_to<bool>());
      break;
    case SplitBehavior::kMergedWithPrevious:
      out = JoinSegments(segments, match_after_gap);
      break;
    case SplitBehavior::kMergedWithNext:
      // The mirror image of kMergedWithPrevious: a match joins the gap after it.
      out = JoinSegments(segments | std::views::reverse, match_after_gap);
      std::reverse(out.begin(), out.end());
      break;
  }
  return out;
}

// Appends the non-empty pieces of `text` split by `re`.
void SplitText(const OnigRegex& re, SplitBehavior behavior, bool invert, std::string_view text,
               std::vector<std::string>* out) {
  for (const auto& [begin, end] : ApplyBehavior(FindSegments(re, text, invert), behavior)) {
    if (end > begin) out->emplace_back(text.substr(begin, end - begin));
  }
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void PreTokenize(std::vector<std::string>* pieces) const override {
    for (const auto& step : steps_) step->PreTokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<OnigRegex> pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void PreTokenize(std::vector<std::string>* pieces) const override {
    std::vector<std::string> out;
    for (const std::string& piece : *pieces) SplitText(*pattern_, behavior_, invert_, piece, &out);
    *pieces = std::move(out);
  }

 private:
  std::unique_ptr<OnigRegex> pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// GPT-2's word pattern, which ByteLevel applies when use_regex is set.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<OnigRegex> words)
      : add_prefix_space_(add_prefix_space), words_(std::move(words)) {}
  void PreTokenize(std::vector<std::string>* pieces) const override {
    std::vector<std::string> out;
    for (std::string& piece : *pieces) {
      // Applies to every piece, not only the first, exactly as `tokenizers`.
      if (add_prefix_space_ && !piece.starts_with(" ")) piece.insert(piece.begin(), ' ');
      if (words_ != nullptr) {
        SplitText(*words_, SplitBehavior::kIsolated, /*invert=*/false, piece, &out);
      } else {
        out.push_back(std::move(piece));
      }
    }
    for (std::string& piece : out) piece = ByteLevelEncode(piece);
    *pieces = std::move(out);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<OnigRegex> words_;  // null when use_regex is false
};

absl::StatusOr<SplitBehavior> ParseBehavior(const json& config, std::string_view path) {
  ASSIGN_OR_RETURN(const std::optional<std::string> name, StringMember(config, "behavior", path));
  static const auto* const kBehaviors = new absl::flat_hash_map<std::string, SplitBehavior>{
      {"Removed", SplitBehavior::kRemoved},
      {"Isolated", SplitBehavior::kIsolated},
      {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
      {"MergedWithNext", SplitBehavior::kMergedWithNext},
      {"Contiguous", SplitBehavior::kContiguous},
  };
  const auto it = name ? kBehaviors->find(*name) : kBehaviors->end();
  if (it == kBehaviors->end()) {
    return Invalid(absl::StrCat(Sv(path), ".behavior"),
                   absl::StrCat("unknown split behavior \"", name.value_or(""), "\""));
  }
  return it->second;
}

// A pattern we write ourselves, so failure to compile is a programming error
// reported like any other.
absl::StatusOr<std::unique_ptr<PreTokenizer>> BuiltinSplit(std::string_view pattern,
                                                           SplitBehavior behavior, bool invert) {
  ASSIGN_OR_RETURN(auto regex, OnigRegex::Compile(pattern));
  return std::make_unique<SplitPreTokenizer>(std::move(regex), behavior, invert);
}

}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const json& config,
                                                                const std::string& path) {
  ASSIGN_OR_RETURN(const std::string type, TypeOf(config, path));
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(auto steps, ParseEach<std::unique_ptr<PreTokenizer>>(config, "pretokenizers",
                                                                          path, ParsePreTokenizer));
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Split") {
    ASSIGN_OR_RETURN(auto pattern, ParsePattern(config, path));
    ASSIGN_OR_RETURN(const SplitBehavior behavior, ParseBehavior(config, path));
    ASSIGN_OR_RETURN(const bool invert, BoolMember(config, "invert", false, path));
    return std::make_unique<SplitPreTokenizer>(std::move(pattern), behavior, invert);
  }
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(const bool add_prefix_space,
                     BoolMember(config, "add_prefix_space", true, path));
    ASSIGN_OR_RETURN(const bool use_regex, BoolMember(config, "use_regex", true, path));
    std::unique_ptr<OnigRegex> words;
    if (use_regex) {
      ASSIGN_OR_RETURN(words, OnigRegex::Compile(kGpt2Pattern));
    }
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, std::move(words));
  }
  if (type == "Digits") {
    // Rust's char::is_numeric is the N* categories, each digit one match.
    ASSIGN_OR_RETURN(const bool individual, BoolMember(config, "individual_digits", false, path));
    return BuiltinSplit("\\p{N}",
                        individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
                        /*invert=*/false);
  }
  if (type == "Whitespace") {
    return BuiltinSplit("\\w+|[^\\w\\s]+", SplitBehavior::kRemoved, /*invert=*/true);
  }
  if (type == "WhitespaceSplit") {
    return BuiltinSplit("\\s", SplitBehavior::kRemoved, /*invert=*/false);
  }
  return Invalid(path, absl::StrCat("unsupported pre-tokenizer type \"", type,
                                    "\" (supported: Sequence, Split, ByteLevel, Digits, "
                                    "Whitespace, WhitespaceSplit)"));
}

}  // namespace mlaserve::tokenizer_internal
