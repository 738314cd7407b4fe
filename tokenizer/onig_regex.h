// An Oniguruma regex (the dialect `tokenizers` compiles its Split and Replace
// patterns with) evaluated on RE2. The pattern is translated to RE2 syntax
// once, at load time; the one lookaround idiom tokenizers rely on,
// `\s+(?!\S)`, is emulated by replaying Oniguruma's backtracking by hand.
// Anything that cannot be reproduced exactly is rejected by Compile rather
// than silently mis-matched. An OnigRegex owns its compiled RE2 programs and
// is immutable after Compile, so it may be shared between threads.
#ifndef MLASERVE_TOKENIZER_ONIG_REGEX_H_
#define MLASERVE_TOKENIZER_ONIG_REGEX_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "re2/re2.h"

namespace mlaserve::tokenizer_internal {

class OnigRegex {
 public:
  static absl::StatusOr<std::unique_ptr<OnigRegex>> Compile(std::string_view pattern);
  // A regex matching `literal` verbatim (Split's {"String": ...} pattern).
  static absl::StatusOr<std::unique_ptr<OnigRegex>> Literal(std::string_view literal);

  // Every match as [begin, end) byte offsets, as the onig crate's find_iter
  // yields them: empty matches are reported, except one right where the
  // previous match ended.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;

 private:
  struct Alternative {
    bool lookahead = false;
    bool allow_empty = false;
    bool negative = false;
    std::unique_ptr<RE2> condition;
  };
  struct AltMatch {
    size_t alternative;
    size_t begin;
    size_t end;
  };

  OnigRegex() = default;

  absl::StatusOr<std::string> AddAlternative(std::string_view alt);
  absl::Status BuildSuffixes(const std::vector<std::string>& translated);
  std::optional<AltMatch> MatchFrom(size_t first, std::string_view text, size_t pos,
                                    RE2::Anchor anchor) const;
  std::optional<std::pair<size_t, size_t>> Find(std::string_view text, size_t from) const;
  std::optional<size_t> Resolve(std::string_view text, AltMatch m) const;
  std::optional<size_t> Backtrack(const Alternative& alt, std::string_view text, size_t begin,
                                  size_t run_end) const;

  std::vector<Alternative> alternatives_;  // one per top-level alternative (one if no lookahead)
  std::vector<std::unique_ptr<RE2>> suffixes_;
};

// A piece of text cut by a pattern: a match, or the gap between two.
struct Segment {
  size_t begin;
  size_t end;
  bool is_match;
};

// The text cut into matches and the gaps between them, as tokenizers'
// Pattern::find_matches; with `invert` the gaps count as the matches.
std::vector<Segment> FindSegments(const OnigRegex& re, std::string_view text, bool invert);

}  // namespace mlaserve::tokenizer_internal

#endif  // MLASERVE_TOKENIZER_ONIG_REGEX_H_
