// Oniguruma patterns on RE2. `tokenizers` compiles its regexes with Oniguruma
// (onig crate, UTF-8, ONIG_SYNTAX_ONIGURUMA). RE2 differs in ways that matter
// for tokenizers:
//  * `\s`, `\d`, `\w` are Unicode-aware in Oniguruma and ASCII-only in RE2, so
//    they are rewritten to explicit Unicode classes (also inside [...]);
//  * `\uXXXX` becomes `\x{XXXX}`; `^`/`$` match at line boundaries;
//  * RE2 has no lookaround. The idiom `\s+(?!\S)` (GPT-2, DeepSeek) is
//    emulated, see OnigRegex below. Any other lookaround, atomic groups,
//    possessive quantifiers, backreferences and nested classes are rejected
//    when the tokenizer is loaded rather than silently mis-matched.
#include "tokenizer/onig_regex.h"

#include <algorithm>
#include <span>

#include "absl/container/inlined_vector.h"
#include "absl/memory/memory.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "common/utf8.h"

namespace mlaserve::tokenizer_internal {
namespace {

// ---------------------------------------------------------------------------
// Translation to RE2 syntax
// ---------------------------------------------------------------------------

std::string CodePointEscape(char32_t c) { return absl::StrFormat("\\x{%X}", c); }

// RE2 character-class items (no brackets) for inclusive code point ranges.
std::string RangeItems(std::span<const std::pair<char32_t, char32_t>> ranges) {
  std::string out;
  for (const auto& [lo, hi] : ranges) {
    out += CodePointEscape(lo);
    if (hi != lo) absl::StrAppend(&out, "-", CodePointEscape(hi));
  }
  return out;
}

const std::string& WhitespaceItems() {
  static const std::string* const items = new std::string(RangeItems(UnicodeWhitespaceRanges()));
  return *items;
}

// The complement of White_Space as class items: `\S` inside a class (e.g.
// `[\S\n]`) cannot be written as a negated class within the class.
const std::string& NonWhitespaceItems() {
  static const std::string* const items = [] {
    std::vector<std::pair<char32_t, char32_t>> complement;
    char32_t next = 0;
    for (const auto& [lo, hi] : UnicodeWhitespaceRanges()) {
      if (lo > next) complement.push_back({next, lo - 1});
      next = hi + 1;
    }
    complement.push_back({next, 0x10FFFF});
    return new std::string(RangeItems(complement));
  }();
  return *items;
}

// Oniguruma's `\w` in UTF-8 mode: letters, marks, decimal digits, connectors.
constexpr char kWordItems[] = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

absl::Status PatternError(std::string_view message) {
  return absl::InvalidArgumentError(std::string(message));
}

bool IsHex(char c) { return absl::ascii_isxdigit(static_cast<unsigned char>(c)); }

// Length of the escape sequence starting at p[i] == '\\'.
absl::StatusOr<size_t> EscapeLength(std::string_view p, size_t i) {
  if (i + 1 >= p.size()) return PatternError("pattern ends with a backslash");
  const char c = p[i + 1];
  const bool braced = i + 2 < p.size() && (p[i + 2] == '{' || p[i + 2] == '<');
  if (braced && (c == 'p' || c == 'P' || c == 'x' || c == 'k' || c == 'g')) {
    const size_t close = p.find(p[i + 2] == '{' ? '}' : '>', i + 3);
    if (close == std::string_view::npos) return PatternError("unterminated escape braces");
    return close + 1 - i;
  }
  if (c == 'p' || c == 'P') return std::min<size_t>(3, p.size() - i);
  if (c == 'u') return std::min<size_t>(6, p.size() - i);
  if (c == 'x') {
    size_t n = 2;
    while (n < 4 && i + n < p.size() && IsHex(p[i + n])) ++n;
    return n;
  }
  return 1 + Utf8CharLength(p, i + 1);
}

// One past the ']' closing the class that starts at p[i] == '['.
absl::StatusOr<size_t> ClassEnd(std::string_view p, size_t i) {
  size_t j = i + 1;
  if (j < p.size() && p[j] == '^') ++j;
  if (j < p.size() && p[j] == ']') ++j;  // a leading ']' is a literal
  while (j < p.size()) {
    const char c = p[j];
    if (c == '\\') {
      ASSIGN_OR_RETURN(const size_t n, EscapeLength(p, j));
      j += n;
    } else if (c == '[' && j + 1 < p.size() && p[j + 1] == ':') {
      const size_t close = p.find(":]", j + 2);
      if (close == std::string_view::npos) return PatternError("unterminated POSIX bracket");
      j = close + 2;
    } else if (c == '[') {
      ASSIGN_OR_RETURN(j, ClassEnd(p, j));  // nested set: rejected on translation
    } else if (c == ']') {
      return j + 1;
    } else {
      j += Utf8CharLength(p, j);
    }
  }
  return PatternError("unterminated character class");
}

// Length of the next syntactic unit at p[i]: an escape, a class or a character.
absl::StatusOr<size_t> TokenLength(std::string_view p, size_t i) {
  if (p[i] == '\\') return EscapeLength(p, i);
  if (p[i] == '[') {
    ASSIGN_OR_RETURN(const size_t end, ClassEnd(p, i));
    return end - i;
  }
  return Utf8CharLength(p, i);
}

bool IsLookaroundAt(std::string_view p, size_t i) {
  const std::string_view rest = p.substr(i);
  return rest.starts_with("(?=") || rest.starts_with("(?!") || rest.starts_with("(?<=") ||
         rest.starts_with("(?<!");
}

absl::StatusOr<std::string> TranslateEscape(std::string_view esc, bool in_class) {
  const char c = esc[1];
  switch (c) {
    case 's':
      return in_class ? WhitespaceItems() : absl::StrCat("[", WhitespaceItems(), "]");
    case 'S':
      return in_class ? NonWhitespaceItems() : absl::StrCat("[^", WhitespaceItems(), "]");
    case 'd':
      return std::string("\\p{Nd}");
    case 'D':
      return std::string("\\P{Nd}");
    case 'w':
      return in_class ? std::string(kWordItems) : absl::StrCat("[", kWordItems, "]");
    case 'W':
      if (in_class) return PatternError("\\W inside a character class is not supported");
      return absl::StrCat("[^", kWordItems, "]");
    case 'h':
      return std::string(in_class ? "0-9a-fA-F" : "[0-9a-fA-F]");
    case 'H':
      if (in_class) return PatternError("\\H inside a character class is not supported");
      return std::string("[^0-9a-fA-F]");
    case 'e':
      return std::string("\\x{1B}");
    case 'u': {
      if (esc.size() != 6 || !std::all_of(esc.begin() + 2, esc.end(), IsHex)) {
        return PatternError("\\u must be followed by four hex digits");
      }
      return absl::StrCat("\\x{", std::string(esc.substr(2)), "}");
    }
    case 'b':
      return std::string(in_class ? "\\x{8}" : "\\b");  // RE2's \b is ASCII-only
    case 'A':
    case 'z':
    case 'B':
      if (in_class) return PatternError(absl::StrCat("\\", std::string(1, c), " inside a class"));
      return std::string(esc);
    case 'Z':
    case 'G':
    case 'K':
    case 'R':
    case 'X':
    case 'N':
    case 'O':
    case 'y':
    case 'Y':
    case 'k':
    case 'g':
      return PatternError(absl::StrCat("unsupported escape ", std::string(esc)));
    default:
      return std::string(esc);
  }
}

absl::StatusOr<std::string> TranslateClass(std::string_view cls) {
  std::string out = "[";
  size_t j = 1;
  const size_t last = cls.size() - 1;  // the closing ']'
  if (cls[j] == '^') out += cls[j++];
  if (cls[j] == ']') {
    out += "\\]";
    ++j;
  }
  while (j < last) {
    const char c = cls[j];
    if (c == '\\') {
      ASSIGN_OR_RETURN(const size_t n, EscapeLength(cls, j));
      ASSIGN_OR_RETURN(const std::string t, TranslateEscape(cls.substr(j, n), /*in_class=*/true));
      out += t;
      j += n;
    } else if (c == '[' && cls[j + 1] == ':') {
      const size_t close = cls.find(":]", j + 2);
      out.append(cls.substr(j, close + 2 - j));
      j = close + 2;
    } else if (c == '[') {
      return PatternError("nested character classes are not supported");
    } else if (c == '&' && cls[j + 1] == '&') {
      return PatternError("character class intersection (&&) is not supported");
    } else {
      const size_t n = Utf8CharLength(cls, j);
      out.append(cls.substr(j, n));
      j += n;
    }
  }
  return out + "]";
}

// Translates the group opening at p[i] == '(' and returns how much it consumed.
absl::StatusOr<size_t> TranslateGroupOpen(std::string_view p, size_t i, std::string* out) {
  const std::string_view rest = p.substr(i);
  if (!rest.starts_with("(?")) {
    *out += "(?:";  // no backreferences, so captures are not needed
    return 1;
  }
  if (IsLookaroundAt(p, i)) {
    return PatternError(
        "lookaround is only supported as `X+(?!Y)` / `X*(?=Y)` closing a top-level "
        "alternative, X a single character, escape or class");
  }
  if (rest.starts_with("(?#")) {
    const size_t close = rest.find(')');
    if (close == std::string_view::npos) return PatternError("unterminated comment group");
    return close + 1;
  }
  if (rest.starts_with("(?<") || rest.starts_with("(?P<") || rest.starts_with("(?'")) {
    const size_t close = rest.find_first_of(">'", 3);
    if (close == std::string_view::npos) return PatternError("unterminated group name");
    *out += "(?:";
    return close + 1;
  }
  // Option groups: Oniguruma's `m` is RE2's `s` (dot matches newline).
  size_t j = 2;
  std::string flags;
  while (j < rest.size() && (rest[j] == 'i' || rest[j] == 'm' || rest[j] == '-')) {
    flags += rest[j] == 'm' ? 's' : rest[j];
    ++j;
  }
  if (j < rest.size() && (rest[j] == ':' || rest[j] == ')')) {
    absl::StrAppend(out, "(?", flags, std::string(1, rest[j]));
    return j + 1;
  }
  return PatternError(
      absl::StrCat("unsupported group syntax at \"", std::string(rest.substr(0, 4)), "\""));
}

// Translates an interval `{...}` at p[i]; Oniguruma reads `{,n}` as `{0,n}`
// and a brace that does not form an interval as a literal.
size_t TranslateInterval(std::string_view p, size_t i, std::string* out, bool* is_quantifier) {
  size_t j = i + 1;
  const size_t lo_begin = j;
  while (j < p.size() && absl::ascii_isdigit(static_cast<unsigned char>(p[j]))) ++j;
  const bool has_lo = j > lo_begin;
  bool has_comma = false, has_hi = false;
  if (j < p.size() && p[j] == ',') {
    has_comma = true;
    const size_t hi_begin = ++j;
    while (j < p.size() && absl::ascii_isdigit(static_cast<unsigned char>(p[j]))) ++j;
    has_hi = j > hi_begin;
  }
  if (j < p.size() && p[j] == '}' && (has_lo || (has_comma && has_hi))) {
    *out += has_lo ? std::string(p.substr(i, j + 1 - i))
                   : absl::StrCat("{0", std::string(p.substr(i + 1, j - i)));
    *is_quantifier = true;
    return j + 1 - i;
  }
  *out += "\\{";
  *is_quantifier = false;
  return 1;
}

// Translates a lookaround-free Oniguruma pattern to RE2 syntax.
absl::StatusOr<std::string> TranslatePattern(std::string_view p) {
  std::string out;
  bool after_quantifier = false;
  for (size_t i = 0; i < p.size();) {
    const char c = p[i];
    bool quantifier = false;
    if (c == '\\') {
      ASSIGN_OR_RETURN(const size_t n, EscapeLength(p, i));
      ASSIGN_OR_RETURN(const std::string t, TranslateEscape(p.substr(i, n), /*in_class=*/false));
      out += t;
      i += n;
    } else if (c == '[') {
      ASSIGN_OR_RETURN(const size_t end, ClassEnd(p, i));
      ASSIGN_OR_RETURN(const std::string t, TranslateClass(p.substr(i, end - i)));
      out += t;
      i = end;
    } else if (c == '(') {
      ASSIGN_OR_RETURN(const size_t n, TranslateGroupOpen(p, i, &out));
      i += n;
    } else if (c == '^' || c == '$') {
      absl::StrAppend(&out, "(?m:", std::string(1, c), ")");  // line anchors in Oniguruma
      ++i;
    } else if (c == '+' || c == '*' || c == '?') {
      if (after_quantifier && c == '+') {
        return PatternError("possessive quantifiers are not supported");
      }
      out += c;
      quantifier = !after_quantifier;  // a '?' after a quantifier only makes it lazy
      ++i;
    } else if (c == '{') {
      i += TranslateInterval(p, i, &out, &quantifier);
    } else {
      const size_t n = Utf8CharLength(p, i);
      out.append(p.substr(i, n));
      i += n;
    }
    after_quantifier = quantifier;
  }
  return out;
}

struct TopLevel {
  std::vector<std::string_view> alternatives;
  bool has_lookaround = false;
  bool has_bare_option_group = false;  // `(?i)`: scoped to what follows
};

absl::StatusOr<TopLevel> SplitTopLevel(std::string_view p) {
  TopLevel top;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < p.size();) {
    ASSIGN_OR_RETURN(const size_t n, TokenLength(p, i));
    if (p[i] == '(') {
      if (IsLookaroundAt(p, i)) top.has_lookaround = true;
      const size_t close = p.find_first_not_of("imx-", i + 2);
      if (depth == 0 && p.substr(i, 2) == "(?" && close != std::string_view::npos &&
          p[close] == ')') {
        top.has_bare_option_group = true;
      }
      ++depth;
    } else if (p[i] == ')') {
      if (--depth < 0) return PatternError("unbalanced ')'");
    } else if (p[i] == '|' && depth == 0) {
      top.alternatives.push_back(p.substr(start, i - start));
      start = i + 1;
    }
    i += n;
  }
  if (depth != 0) return PatternError("unbalanced '('");
  top.alternatives.push_back(p.substr(start));
  return top;
}

// A single-character atom: any prefix of a run of it is again a run of it,
// which is what makes the lookahead emulation's backtracking exact.
bool IsSingleCharAtom(std::string_view atom) {
  if (atom == ".") return true;
  if (atom[0] == '[') return true;
  if (atom[0] == '\\') {
    const auto c = static_cast<unsigned char>(atom[1]);
    if (c >= 0x80) return true;
    if (absl::ascii_isalnum(c)) {
      return std::string_view("sSdDwWhHpPxuetnrfva").find(atom[1]) != std::string_view::npos;
    }
    return true;  // an escaped punctuation character
  }
  return std::string_view("()|*+?{}^$").find(atom[0]) == std::string_view::npos;
}

struct LookaheadForm {
  std::string_view atom;
  bool allow_empty;  // `*` rather than `+`
  bool negative;     // `(?!` rather than `(?=`
  std::string_view condition;
};

// Parses an alternative of the form ATOM('+'|'*')'(?'('!'|'=')COND')'.
absl::StatusOr<LookaheadForm> ParseLookaheadAlternative(std::string_view alt) {
  const absl::Status unsupported = PatternError(
      absl::StrCat("unsupported lookaround in \"", std::string(alt),
                   "\": only `X+(?!Y)` / `X*(?=Y)` closing a top-level alternative is supported, "
                   "X a single character, escape or class"));
  if (alt.empty()) return unsupported;
  ASSIGN_OR_RETURN(const size_t atom_len, TokenLength(alt, 0));
  if (!IsSingleCharAtom(alt.substr(0, atom_len)) || atom_len + 1 >= alt.size()) {
    return unsupported;
  }
  const char quantifier = alt[atom_len];
  const std::string_view look = alt.substr(atom_len + 1);
  if ((quantifier != '+' && quantifier != '*') ||
      !(look.starts_with("(?!") || look.starts_with("(?="))) {
    return unsupported;
  }
  // The lookahead group must close exactly at the end of the alternative.
  int depth = 0;
  for (size_t i = 0; i < look.size();) {
    ASSIGN_OR_RETURN(const size_t n, TokenLength(look, i));
    if (look[i] == '(') ++depth;
    if (look[i] == ')' && --depth == 0 && i + 1 != look.size()) return unsupported;
    i += n;
  }
  const std::string_view condition = look.substr(3, look.size() - 4);
  ASSIGN_OR_RETURN(const TopLevel inner, SplitTopLevel(condition));
  if (inner.has_lookaround) return unsupported;
  return LookaheadForm{alt.substr(0, atom_len), quantifier == '*', look[2] == '!', condition};
}

absl::StatusOr<std::unique_ptr<RE2>> CompileRe2(const std::string& pattern) {
  RE2::Options options;  // UTF-8, leftmost-first like Oniguruma
  options.set_log_errors(false);
  options.set_max_mem(64 << 20);  // Unicode classes need room for the DFA
  auto re = std::make_unique<RE2>(pattern, options);
  if (!re->ok()) return PatternError(re->error());
  return re;
}

}  // namespace

// ---------------------------------------------------------------------------
// Matching, with the lookahead emulation
// ---------------------------------------------------------------------------
//
// The pattern is split into its top-level alternatives A0|A1|..., each
// wrapped in a capture group so the engine reports which one matched. An
// alternative `X+(?!Y)` (or `X*`, or `(?=Y)`) is searched for in the relaxed
// form `X+`; when that wins at position s, Oniguruma's backtracking is
// replayed by hand: the run of X is shortened one character at a time until
// the lookahead holds after it (for `\s+(?!\S)` in front of a word: give back
// one space). Since X matches exactly one character, every shorter run is a
// match of X+ too, so this is exact. If no length works, the alternative
// fails at s and, as Oniguruma would, the later alternatives are tried at s
// (an anchored regex of A(i+1)|A(i+2)|...); if none matches there the search
// resumes one character further on.

absl::StatusOr<std::unique_ptr<OnigRegex>> OnigRegex::Compile(std::string_view pattern) {
  auto regex = absl::WrapUnique(new OnigRegex);
  ASSIGN_OR_RETURN(const TopLevel top, SplitTopLevel(pattern));
  std::vector<std::string> translated;
  if (!top.has_lookaround) {
    ASSIGN_OR_RETURN(std::string t, TranslatePattern(pattern));
    translated.push_back(std::move(t));
    regex->alternatives_.emplace_back();
  } else {
    if (top.has_bare_option_group) {
      return PatternError("option groups like (?i) cannot be combined with lookaround");
    }
    for (std::string_view alt : top.alternatives) {
      ASSIGN_OR_RETURN(std::string t, regex->AddAlternative(alt));
      translated.push_back(std::move(t));
    }
  }
  RETURN_IF_ERROR(regex->BuildSuffixes(translated));
  return regex;
}

absl::StatusOr<std::unique_ptr<OnigRegex>> OnigRegex::Literal(std::string_view literal) {
  auto regex = absl::WrapUnique(new OnigRegex);
  regex->alternatives_.emplace_back();
  RETURN_IF_ERROR(regex->BuildSuffixes({RE2::QuoteMeta(literal)}));
  return regex;
}

std::vector<std::pair<size_t, size_t>> OnigRegex::FindAll(std::string_view text) const {
  if (text.data() == nullptr) text = std::string_view("", 0);
  std::vector<std::pair<size_t, size_t>> matches;
  size_t last_end = 0;
  std::optional<size_t> last_match_end;
  while (last_end <= text.size()) {
    const std::optional<std::pair<size_t, size_t>> m = Find(text, last_end);
    if (!m) break;
    if (m->first == m->second && last_match_end == m->second) {
      last_end += last_end < text.size() ? Utf8CharLength(text, last_end) : 1;
      continue;
    }
    last_end = last_match_end.emplace(m->second);
    matches.push_back(*m);
  }
  return matches;
}

// Records one top-level alternative and returns its RE2 form (relaxed for a
// lookahead alternative).
absl::StatusOr<std::string> OnigRegex::AddAlternative(std::string_view alt) {
  Alternative& entry = alternatives_.emplace_back();
  ASSIGN_OR_RETURN(const TopLevel inner, SplitTopLevel(alt));
  if (!inner.has_lookaround) return TranslatePattern(alt);
  ASSIGN_OR_RETURN(const LookaheadForm form, ParseLookaheadAlternative(alt));
  ASSIGN_OR_RETURN(const std::string condition, TranslatePattern(form.condition));
  ASSIGN_OR_RETURN(entry.condition, CompileRe2(condition));
  entry.lookahead = true;
  entry.allow_empty = form.allow_empty;
  entry.negative = form.negative;
  ASSIGN_OR_RETURN(const std::string atom, TranslatePattern(form.atom));
  return absl::StrCat("(?:", atom, ")", form.allow_empty ? "*" : "+");
}

// suffixes_[k] matches alternatives k, k+1, ... (each one capture group);
// only k == 0 and the ones after a lookahead alternative are ever needed.
absl::Status OnigRegex::BuildSuffixes(const std::vector<std::string>& translated) {
  suffixes_.resize(translated.size());
  for (size_t k = 0; k < translated.size(); ++k) {
    if (k > 0 && !alternatives_[k - 1].lookahead) continue;
    std::string pattern;
    for (size_t i = k; i < translated.size(); ++i) {
      absl::StrAppend(&pattern, i > k ? "|" : "", "(", translated[i], ")");
    }
    ASSIGN_OR_RETURN(suffixes_[k], CompileRe2(pattern));
  }
  return absl::OkStatus();
}

std::optional<OnigRegex::AltMatch> OnigRegex::MatchFrom(size_t first, std::string_view text,
                                                        size_t pos, RE2::Anchor anchor) const {
  const int groups = static_cast<int>(alternatives_.size() - first) + 1;
  absl::InlinedVector<re2::StringPiece, 16> spans(groups);
  if (!suffixes_[first]->Match(text, pos, text.size(), anchor, spans.data(), groups)) {
    return std::nullopt;
  }
  for (int g = 1; g < groups; ++g) {
    if (spans[g].data() == nullptr) continue;
    const size_t begin = spans[g].data() - text.data();
    return AltMatch{first + g - 1, begin, begin + spans[g].size()};
  }
  return std::nullopt;
}

// The leftmost-first match starting at or after `from`.
std::optional<std::pair<size_t, size_t>> OnigRegex::Find(std::string_view text, size_t from) const {
  for (size_t pos = from; pos <= text.size();) {
    const std::optional<AltMatch> m = MatchFrom(0, text, pos, RE2::UNANCHORED);
    if (!m) return std::nullopt;
    if (const std::optional<size_t> end = Resolve(text, *m)) return std::pair(m->begin, *end);
    if (m->begin >= text.size()) return std::nullopt;
    pos = m->begin + Utf8CharLength(text, m->begin);
  }
  return std::nullopt;
}

// The end of the real match at m.begin, given that the (possibly relaxed)
// alternative m.alternative was the first to match there.
std::optional<size_t> OnigRegex::Resolve(std::string_view text, AltMatch m) const {
  while (true) {
    const Alternative& alt = alternatives_[m.alternative];
    if (!alt.lookahead) return m.end;
    if (const std::optional<size_t> end = Backtrack(alt, text, m.begin, m.end)) return end;
    if (m.alternative + 1 >= alternatives_.size()) return std::nullopt;
    const std::optional<AltMatch> next =
        MatchFrom(m.alternative + 1, text, m.begin, RE2::ANCHOR_START);
    if (!next) return std::nullopt;
    m = *next;
  }
}

// The longest run [begin, end) with end <= run_end after which the lookahead
// holds, as Oniguruma's greedy backtracking finds it.
std::optional<size_t> OnigRegex::Backtrack(const Alternative& alt, std::string_view text,
                                           size_t begin, size_t run_end) const {
  for (size_t end = run_end;;) {
    if (end == begin && !alt.allow_empty) return std::nullopt;
    const bool holds = alt.condition->Match(text, end, text.size(), RE2::ANCHOR_START, nullptr, 0);
    if (holds != alt.negative) return end;
    if (end == begin) return std::nullopt;
    --end;  // give back one character
    while (end > begin && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  }
}

std::vector<Segment> FindSegments(const OnigRegex& re, std::string_view text, bool invert) {
  std::vector<Segment> segments;
  if (text.empty()) return {{0, 0, invert}};
  size_t prev = 0;
  for (const auto& [begin, end] : re.FindAll(text)) {
    if (prev != begin) segments.push_back({prev, begin, invert});
    segments.push_back({begin, end, !invert});
    prev = end;
  }
  if (prev != text.size()) segments.push_back({prev, text.size(), invert});
  return segments;
}

}  // namespace mlaserve::tokenizer_internal
