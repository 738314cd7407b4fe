// Hugging Face `tokenizer.json` tokenizer. The behaviour follows the Rust
// `tokenizers` library step by step (added tokens, normalizer, pre-tokenizer,
// BPE model, decoder), because the serving stack must produce the very ids the
// model was trained on: any deviation silently degrades the model.
#include "coordinator/tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <limits>
#include <optional>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "re2/re2.h"

namespace mlaserve {
namespace {

using json = nlohmann::json;

// This Abseil build has its own string_view, which std::string_view does not
// convert to implicitly.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// ---------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------

// Length of the well-formed UTF-8 sequence at s[pos] (1 to 4), or 0 if there
// is none. `*valid_prefix` receives how many bytes starting at `pos` are a
// prefix of some well-formed sequence (at least 1): the "maximal subpart"
// that Unicode (and Rust's from_utf8_lossy) replaces by a single U+FFFD.
size_t Utf8SequenceLength(std::string_view s, size_t pos, size_t* valid_prefix) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  *valid_prefix = 1;
  if (b0 < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;  // no overlong forms
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  size_t i = 1;
  for (; i < need && pos + i < s.size(); ++i) {
    const auto b = static_cast<unsigned char>(s[pos + i]);
    const bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) break;
  }
  *valid_prefix = i;
  return i == need ? need : 0;
}

// Byte length of the character at s[pos]; an invalid byte counts as one
// character so that malformed input is still walked to the end.
size_t CharLen(std::string_view s, size_t pos) {
  size_t prefix;
  const size_t n = Utf8SequenceLength(s, pos, &prefix);
  return n == 0 ? 1 : n;
}

// The code point at s[pos] (which must start a well-formed sequence of `len`
// bytes).
char32_t DecodeAt(std::string_view s, size_t pos, size_t len) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[pos + i]); };
  switch (len) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

// `tokenizers` decodes with Rust's String::from_utf8_lossy, which replaces
// each maximal invalid subpart by one U+FFFD (the Unicode "best practice").
// Neither Abseil nor RE2 offers this conversion, so it is written out here;
// the exact count of U+FFFD matters because clients compare decoded text.
std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t prefix;
    const size_t n = Utf8SequenceLength(bytes, pos, &prefix);
    if (n > 0) {
      out.append(bytes.substr(pos, n));
      pos += n;
    } else {
      out.append("\xEF\xBF\xBD");
      pos += prefix;
    }
  }
  return out;
}

// The Unicode White_Space property: what both Oniguruma's `\s` (UTF-8 mode)
// and Rust's char::is_whitespace / regex `\s` match.
constexpr std::pair<char32_t, char32_t> kWhitespaceRanges[] = {
    {0x09, 0x0D},     {0x20, 0x20},     {0x85, 0x85},     {0xA0, 0xA0},     {0x1680, 0x1680},
    {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000},
};

bool IsWhitespace(char32_t c) {
  for (const auto& [lo, hi] : kWhitespaceRanges) {
    if (c >= lo && c <= hi) return true;
  }
  return false;
}

// Start of the run of whitespace characters that ends at s[end].
size_t WhitespaceRunStart(std::string_view s, size_t end) {
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && end - start < 4 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) {
      --start;
    }
    size_t prefix;
    const size_t len = Utf8SequenceLength(s, start, &prefix);
    if (len != end - start || !IsWhitespace(DecodeAt(s, start, len))) break;
    end = start;
  }
  return end;
}

// End of the run of whitespace characters that starts at s[begin].
size_t WhitespaceRunEnd(std::string_view s, size_t begin) {
  while (begin < s.size()) {
    size_t prefix;
    const size_t len = Utf8SequenceLength(s, begin, &prefix);
    if (len == 0 || !IsWhitespace(DecodeAt(s, begin, len))) break;
    begin += len;
  }
  return begin;
}

// ---------------------------------------------------------------------------
// Byte-level alphabet
// ---------------------------------------------------------------------------

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
// others are shifted to U+0100 onwards, so every byte is a visible character
// that BPE can merge (and spaces never appear inside a token).
struct ByteLevelAlphabet {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 324> char_to_byte;  // indexed by code point; -1: none
};

const ByteLevelAlphabet& Alphabet() {
  static const ByteLevelAlphabet* const alphabet = [] {
    auto* a = new ByteLevelAlphabet;
    a->char_to_byte.fill(-1);
    int shifted = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t c = printable ? b : 256 + shifted++;
      AppendUtf8(c, &a->byte_to_utf8[b]);
      a->char_to_byte[c] = static_cast<int16_t>(b);
    }
    return a;
  }();
  return *alphabet;
}

std::string ByteLevelEncode(std::string_view text) {
  std::string out;
  out.reserve(text.size() * 2);
  for (unsigned char b : text) out += Alphabet().byte_to_utf8[b];
  return out;
}

// Appends the bytes a token stands for under the ByteLevel decoder: when a
// character falls outside the alphabet (as in most added tokens), `tokenizers`
// keeps the token's own UTF-8 text instead.
void AppendByteLevelDecoded(std::string_view token, std::string* out) {
  std::string bytes;
  bytes.reserve(token.size());
  for (size_t pos = 0; pos < token.size();) {
    size_t prefix;
    const size_t len = Utf8SequenceLength(token, pos, &prefix);
    const char32_t c = len == 0 ? 0xFFFD : DecodeAt(token, pos, len);
    if (len == 0 || c >= Alphabet().char_to_byte.size() || Alphabet().char_to_byte[c] < 0) {
      out->append(token);
      return;
    }
    bytes.push_back(static_cast<char>(Alphabet().char_to_byte[c]));
    pos += len;
  }
  out->append(bytes);
}

// ---------------------------------------------------------------------------
// Oniguruma patterns on RE2
// ---------------------------------------------------------------------------
//
// `tokenizers` compiles its regexes with Oniguruma (onig crate, UTF-8,
// ONIG_SYNTAX_ONIGURUMA). RE2 differs in ways that matter for tokenizers:
//  * `\s`, `\d`, `\w` are Unicode-aware in Oniguruma and ASCII-only in RE2, so
//    they are rewritten to explicit Unicode classes (also inside [...]);
//  * `\uXXXX` becomes `\x{XXXX}`; `^`/`$` match at line boundaries;
//  * RE2 has no lookaround. The idiom `\s+(?!\S)` (GPT-2, DeepSeek) is
//    emulated, see OnigRegex below. Any other lookaround, atomic groups,
//    possessive quantifiers, backreferences and nested classes are rejected
//    when the tokenizer is loaded rather than silently mis-matched.

std::string CodePointEscape(char32_t c) { return absl::StrFormat("\\x{%X}", c); }

// RE2 character-class items (no brackets) for inclusive code point ranges.
std::string RangeItems(absl::Span<const std::pair<char32_t, char32_t>> ranges) {
  std::string out;
  for (const auto& [lo, hi] : ranges) {
    out += CodePointEscape(lo);
    if (hi != lo) absl::StrAppend(&out, "-", CodePointEscape(hi));
  }
  return out;
}

const std::string& WhitespaceItems() {
  static const std::string* const items = new std::string(RangeItems(kWhitespaceRanges));
  return *items;
}

// The complement of White_Space as class items: `\S` inside a class (e.g.
// `[\S\n]`) cannot be written as a negated class within the class.
const std::string& NonWhitespaceItems() {
  static const std::string* const items = [] {
    std::vector<std::pair<char32_t, char32_t>> complement;
    char32_t next = 0;
    for (const auto& [lo, hi] : kWhitespaceRanges) {
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
  return absl::InvalidArgumentError(Sv(message));
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
  return 1 + CharLen(p, i + 1);
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
      j += CharLen(p, j);
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
  return CharLen(p, i);
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
      return absl::StrCat("\\x{", Sv(esc.substr(2)), "}");
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
      return PatternError(absl::StrCat("unsupported escape ", Sv(esc)));
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
      const size_t n = CharLen(cls, j);
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
  return PatternError(absl::StrCat("unsupported group syntax at \"", Sv(rest.substr(0, 4)), "\""));
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
                   : absl::StrCat("{0", Sv(p.substr(i + 1, j - i)));
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
      const size_t n = CharLen(p, i);
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
      absl::StrCat("unsupported lookaround in \"", Sv(alt),
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

// An Oniguruma regex evaluated with RE2, with leftmost-first semantics.
//
// Lookahead emulation: the pattern is split into its top-level alternatives
// A0|A1|..., each wrapped in a capture group so the engine reports which one
// matched. An alternative `X+(?!Y)` (or `X*`, or `(?=Y)`) is searched for in
// the relaxed form `X+`; when that wins at position s, Oniguruma's
// backtracking is replayed by hand: the run of X is shortened one character
// at a time until the lookahead holds after it (for `\s+(?!\S)` in front of a
// word: give back one space). Since X matches exactly one character, every
// shorter run is a match of X+ too, so this is exact. If no length works, the
// alternative fails at s and, as Oniguruma would, the later alternatives are
// tried at s (an anchored regex of A(i+1)|A(i+2)|...); if none matches there
// the search resumes one character further on.
class OnigRegex {
 public:
  static absl::StatusOr<std::unique_ptr<OnigRegex>> Compile(std::string_view pattern) {
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

  // A regex matching `literal` verbatim (Split's {"String": ...} pattern).
  static absl::StatusOr<std::unique_ptr<OnigRegex>> Literal(std::string_view literal) {
    auto regex = absl::WrapUnique(new OnigRegex);
    regex->alternatives_.emplace_back();
    RETURN_IF_ERROR(regex->BuildSuffixes({RE2::QuoteMeta(literal)}));
    return regex;
  }

  // Every match, as the onig crate's find_iter yields them: empty matches are
  // reported, except one right where the previous match ended.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const {
    if (text.data() == nullptr) text = std::string_view("", 0);
    std::vector<std::pair<size_t, size_t>> matches;
    size_t last_end = 0;
    std::optional<size_t> last_match_end;
    while (last_end <= text.size()) {
      const std::optional<std::pair<size_t, size_t>> m = Find(text, last_end);
      if (!m) break;
      if (m->first == m->second && last_match_end == m->second) {
        last_end += last_end < text.size() ? CharLen(text, last_end) : 1;
        continue;
      }
      last_end = last_match_end.emplace(m->second);
      matches.push_back(*m);
    }
    return matches;
  }

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

  // Records one top-level alternative and returns its RE2 form (relaxed
  // for a lookahead alternative).
  absl::StatusOr<std::string> AddAlternative(std::string_view alt) {
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
  absl::Status BuildSuffixes(const std::vector<std::string>& translated) {
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

  std::optional<AltMatch> MatchFrom(size_t first, std::string_view text, size_t pos,
                                    RE2::Anchor anchor) const {
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
  std::optional<std::pair<size_t, size_t>> Find(std::string_view text, size_t from) const {
    for (size_t pos = from; pos <= text.size();) {
      const std::optional<AltMatch> m = MatchFrom(0, text, pos, RE2::UNANCHORED);
      if (!m) return std::nullopt;
      if (const std::optional<size_t> end = Resolve(text, *m)) return std::pair(m->begin, *end);
      if (m->begin >= text.size()) return std::nullopt;
      pos = m->begin + CharLen(text, m->begin);
    }
    return std::nullopt;
  }

  // The end of the real match at m.begin, given that the (possibly relaxed)
  // alternative m.alternative was the first to match there.
  std::optional<size_t> Resolve(std::string_view text, AltMatch m) const {
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

  // The longest run [begin, end) with end <= run_end after which the
  // lookahead holds, as Oniguruma's greedy backtracking finds it.
  std::optional<size_t> Backtrack(const Alternative& alt, std::string_view text, size_t begin,
                                  size_t run_end) const {
    for (size_t end = run_end;;) {
      if (end == begin && !alt.allow_empty) return std::nullopt;
      const bool holds =
          alt.condition->Match(text, end, text.size(), RE2::ANCHOR_START, nullptr, 0);
      if (holds != alt.negative) return end;
      if (end == begin) return std::nullopt;
      --end;  // give back one character
      while (end > begin && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
    }
  }

  std::vector<Alternative> alternatives_;
  std::vector<std::unique_ptr<RE2>> suffixes_;
};

// ---------------------------------------------------------------------------
// Splitting (tokenizers' NormalizedString::split and its Pattern trait)
// ---------------------------------------------------------------------------

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct Segment {
  size_t begin;
  size_t end;
  bool is_match;
};

// The text cut into matches and the gaps between them, as Pattern::find_matches.
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

// The ranges kept under `behavior`, in order.
std::vector<std::pair<size_t, size_t>> ApplyBehavior(const std::vector<Segment>& segments,
                                                     SplitBehavior behavior) {
  std::vector<std::pair<size_t, size_t>> out;
  bool previous_match = false;
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
      for (const Segment& s : segments) {
        if (s.is_match == previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.push_back({s.begin, s.end});
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Segment& s : segments) {
        if (s.is_match && !previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.push_back({s.begin, s.end});
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) {
          out.back().first = it->begin;
        } else {
          out.push_back({it->begin, it->end});
        }
        previous_match = it->is_match;
      }
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

// ---------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------

absl::Status Invalid(std::string_view path, std::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", Sv(path), ": ", Sv(message)));
}

// The member `key` of `object`; nullptr when absent or null.
const json* Member(const json& object, const std::string& key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<bool> BoolMember(const json& object, const std::string& key, bool default_value,
                                std::string_view path) {
  const json* value = Member(object, key);
  if (value == nullptr) return default_value;
  if (!value->is_boolean()) return Invalid(absl::StrCat(Sv(path), ".", key), "expected a boolean");
  return value->get<bool>();
}

absl::StatusOr<std::optional<std::string>> StringMember(const json& object, const std::string& key,
                                                        std::string_view path) {
  const json* value = Member(object, key);
  if (value == nullptr) return std::optional<std::string>();
  if (!value->is_string()) return Invalid(absl::StrCat(Sv(path), ".", key), "expected a string");
  return std::optional<std::string>(value->get<std::string>());
}

absl::StatusOr<std::string> TypeOf(const json& config, std::string_view path) {
  if (!config.is_object()) return Invalid(path, "expected an object");
  ASSIGN_OR_RETURN(const std::optional<std::string> type, StringMember(config, "type", path));
  if (!type) return Invalid(path, "missing \"type\"");
  return *type;
}

absl::StatusOr<const json*> ArrayMember(const json& object, const std::string& key,
                                        std::string_view path) {
  const json* value = Member(object, key);
  if (value == nullptr || !value->is_array()) {
    return Invalid(absl::StrCat(Sv(path), ".", key), "expected an array");
  }
  return value;
}

// A Split/Replace pattern: {"Regex": "..."} or {"String": "..."}.
absl::StatusOr<std::unique_ptr<OnigRegex>> ParsePattern(const json& object, std::string_view path) {
  const std::string field = absl::StrCat(Sv(path), ".pattern");
  const json* pattern = Member(object, "pattern");
  if (pattern != nullptr) {
    if (const json* regex = Member(*pattern, "Regex"); regex != nullptr && regex->is_string()) {
      absl::StatusOr<std::unique_ptr<OnigRegex>> compiled =
          OnigRegex::Compile(regex->get<std::string>());
      if (!compiled.ok()) {
        return Invalid(absl::StrCat(field, ".Regex"),
                       absl::StrCat("invalid regex: ", compiled.status().message()));
      }
      return compiled;
    }
    if (const json* literal = Member(*pattern, "String");
        literal != nullptr && literal->is_string()) {
      return OnigRegex::Literal(literal->get<std::string>());
    }
  }
  return Invalid(field, "expected {\"Regex\": ...} or {\"String\": ...}");
}

// ---------------------------------------------------------------------------
// Normalizers
// ---------------------------------------------------------------------------

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string Normalize(std::string_view text) const = 0;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  std::string Normalize(std::string_view text) const override {
    std::string out(text);
    for (const auto& step : steps_) out = step->Normalize(out);
    return out;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string Normalize(std::string_view text) const override {
    return text.empty() ? std::string() : absl::StrCat(prefix_, Sv(text));
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<OnigRegex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  std::string Normalize(std::string_view text) const override {
    std::string out;
    for (const Segment& s : FindSegments(*pattern_, text, /*invert=*/false)) {
      if (s.is_match) {
        out += content_;
      } else {
        out.append(text.substr(s.begin, s.end - s.begin));
      }
    }
    return out;
  }

 private:
  std::unique_ptr<OnigRegex> pattern_;
  std::string content_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  std::string Normalize(std::string_view text) const override {
    const size_t begin = left_ ? WhitespaceRunEnd(text, 0) : 0;
    const size_t end = right_ ? WhitespaceRunStart(text, text.size()) : text.size();
    return end > begin ? std::string(text.substr(begin, end - begin)) : std::string();
  }

 private:
  bool left_;
  bool right_;
};

// Unicode normalization forms and case folding need tables we do not carry;
// they are rejected rather than approximated, since a wrong normalizer would
// change ids without any visible error.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const json& config,
                                                            const std::string& path) {
  ASSIGN_OR_RETURN(const std::string type, TypeOf(config, path));
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, ArrayMember(config, "normalizers", path));
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(auto step,
                       ParseNormalizer((*list)[i], absl::StrCat(path, ".normalizers[", i, "]")));
      steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(const std::optional<std::string> prefix,
                     StringMember(config, "prepend", path));
    if (!prefix) return Invalid(path, "missing \"prepend\"");
    return std::make_unique<PrependNormalizer>(*prefix);
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(auto pattern, ParsePattern(config, path));
    ASSIGN_OR_RETURN(const std::optional<std::string> content,
                     StringMember(config, "content", path));
    if (!content) return Invalid(path, "missing \"content\"");
    return std::make_unique<ReplaceNormalizer>(std::move(pattern), *content);
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(const bool left, BoolMember(config, "strip_left", true, path));
    ASSIGN_OR_RETURN(const bool right, BoolMember(config, "strip_right", true, path));
    return std::make_unique<StripNormalizer>(left, right);
  }
  return Invalid(path, absl::StrCat("unsupported normalizer type \"", type,
                                    "\" (supported: Sequence, Prepend, Replace, Strip)"));
}

// ---------------------------------------------------------------------------
// Pre-tokenizers
// ---------------------------------------------------------------------------

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits every piece further; empty pieces are dropped, as in `tokenizers`.
  virtual void PreTokenize(std::vector<std::string>* pieces) const = 0;
};

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
      if (add_prefix_space_ && !piece.starts_with(" ")) piece.insert(0, " ");
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

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const json& config,
                                                                const std::string& path) {
  ASSIGN_OR_RETURN(const std::string type, TypeOf(config, path));
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, ArrayMember(config, "pretokenizers", path));
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(
          auto step, ParsePreTokenizer((*list)[i], absl::StrCat(path, ".pretokenizers[", i, "]")));
      steps.push_back(std::move(step));
    }
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

// ---------------------------------------------------------------------------
// BPE model
// ---------------------------------------------------------------------------

class BpeModel {
 public:
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const json& config);

  // Appends the ids of one pre-tokenized word.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
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
      if (cache_.size() < kCacheCapacity)
        cache_.try_emplace(std::string(word), std::move(word_ids));
    }
  }

  std::optional<int32_t> TokenToId(std::string_view token) const {
    const auto it = vocab_.find(Sv(token));
    if (it == vocab_.end()) return std::nullopt;
    return it->second;
  }
  const std::string* IdToToken(int32_t id) const {
    const auto it = vocab_r_.find(id);
    return it == vocab_r_.end() ? nullptr : &it->second;
  }
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

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const MergeTarget* FindMerge(int32_t a, int32_t b) const {
    const auto it = merges_.find(PairKey(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }

  std::vector<Symbol> InitialSymbols(std::string_view word) const;
  void MergeAll(std::vector<Symbol>* symbols) const;
  std::vector<int32_t> MergeWord(std::string_view word) const {
    std::vector<Symbol> symbols = InitialSymbols(word);
    MergeAll(&symbols);
    std::vector<int32_t> ids;
    for (const Symbol& s : symbols) {
      if (s.len != 0) ids.push_back(s.id);
    }
    return ids;
  }

  absl::flat_hash_map<std::string, int32_t> vocab_;
  absl::flat_hash_map<int32_t, std::string> vocab_r_;
  absl::flat_hash_map<uint64_t, MergeTarget> merges_;
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
    const size_t len = CharLen(word, pos);
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
  const json* vocab = Member(config, "vocab");
  if (vocab == nullptr || !vocab->is_object()) return Invalid("model.vocab", "expected an object");
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return Invalid("model.vocab", absl::StrCat("bad id for token \"", token, "\""));
    }
    const auto value = static_cast<int32_t>(id.get<int64_t>());
    model->vocab_[token] = value;
    model->vocab_r_[value] = token;
    model->max_id_ = std::max(model->max_id_, value);
  }
  ASSIGN_OR_RETURN(const std::optional<std::string> prefix,
                   StringMember(config, "continuing_subword_prefix", "model"));
  ASSIGN_OR_RETURN(const std::optional<std::string> suffix,
                   StringMember(config, "end_of_word_suffix", "model"));
  model->continuing_subword_prefix_ = prefix.value_or("");
  model->end_of_word_suffix_ = suffix.value_or("");
  ASSIGN_OR_RETURN(model->fuse_unk_, BoolMember(config, "fuse_unk", false, "model"));
  ASSIGN_OR_RETURN(model->byte_fallback_, BoolMember(config, "byte_fallback", false, "model"));
  ASSIGN_OR_RETURN(model->ignore_merges_, BoolMember(config, "ignore_merges", false, "model"));
  ASSIGN_OR_RETURN(const std::optional<std::string> unk,
                   StringMember(config, "unk_token", "model"));
  if (unk) {
    model->unk_id_ = model->TokenToId(*unk);
    if (!model->unk_id_) return Invalid("model.unk_token", "not in the vocabulary");
  }

  ASSIGN_OR_RETURN(const json* list, ArrayMember(config, "merges", "model"));
  std::vector<std::pair<std::string, std::string>> merges;
  RETURN_IF_ERROR(ParseMerges(*list, model->continuing_subword_prefix_, &merges));
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const std::string merged =
        absl::StrCat(left, right.substr(model->continuing_subword_prefix_.size()));
    const std::optional<int32_t> a = model->TokenToId(left);
    const std::optional<int32_t> b = model->TokenToId(right);
    const std::optional<int32_t> c = model->TokenToId(merged);
    if (!a || !b || !c) {
      return Invalid(
          absl::StrCat("model.merges[", rank, "]"),
          absl::StrCat("merge \"", left, " ", right, "\" uses a token not in the vocabulary"));
    }
    // A repeated pair takes its last rank, as tokenizers' HashMap collect does.
    model->merges_[PairKey(*a, *b)] = {static_cast<int32_t>(rank), *c};
  }
  return model;
}

// ---------------------------------------------------------------------------
// Added tokens
// ---------------------------------------------------------------------------

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
};

// Either an added token (id >= 0) or text still to be tokenized.
struct Piece {
  std::string text;
  int32_t id = -1;
};

bool IsWordChar(std::string_view s, size_t pos, size_t len) {
  // Rust regex's Unicode \w, which tokenizers uses for single_word.
  static const RE2* const kWord = new RE2("[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]");
  return RE2::FullMatch(re2::StringPiece(s.data() + pos, len), *kWord);
}

// Finds added tokens like tokenizers' AddedVocabulary: leftmost-longest
// (Aho-Corasick) matching, then the single_word / lstrip / rstrip rules.
class AddedTokenSplitter {
 public:
  void Add(const AddedToken* token, std::string pattern) {
    if (pattern.empty()) return;
    // Longest first, so the first hit is the leftmost-longest match.
    auto& bucket = by_first_byte_[static_cast<unsigned char>(pattern[0])];
    const auto at = std::find_if(bucket.begin(), bucket.end(),
                                 [&](const Entry& e) { return e.pattern.size() < pattern.size(); });
    bucket.insert(at, {token, std::move(pattern)});
  }

  // Appends `text` cut into added tokens and the (non-empty) text between them.
  void Split(std::string_view text, std::vector<Piece>* out) const {
    size_t start_offset = 0;
    for (size_t pos = 0; pos < text.size();) {
      const Entry* hit = LongestAt(text, pos);
      if (hit == nullptr) {
        ++pos;
        continue;
      }
      size_t start = pos;
      size_t stop = pos + hit->pattern.size();
      pos = stop;  // matching resumes after a match even when it is rejected
      const AddedToken& token = *hit->token;
      if (token.single_word && !IsSingleWord(text, start, stop)) continue;
      if (token.lstrip) start = WhitespaceRunStart(text, start);
      if (token.rstrip) stop = WhitespaceRunEnd(text, stop);
      start = std::max(start, start_offset);  // earlier matches keep their spaces
      AppendText(text.substr(start_offset, start - start_offset), out);
      out->push_back({std::string(text.substr(start, stop - start)), token.id});
      start_offset = stop;
    }
    AppendText(text.substr(std::min(start_offset, text.size())), out);
  }

 private:
  struct Entry {
    const AddedToken* token;
    std::string pattern;
  };

  const Entry* LongestAt(std::string_view text, size_t pos) const {
    for (const Entry& e : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      if (text.substr(pos, e.pattern.size()) == e.pattern) return &e;
    }
    return nullptr;
  }

  static bool IsSingleWord(std::string_view text, size_t start, size_t stop) {
    if (start > 0) {
      size_t begin = start - 1;
      while (begin > 0 && start - begin < 4 &&
             (static_cast<unsigned char>(text[begin]) & 0xC0) == 0x80) {
        --begin;
      }
      if (IsWordChar(text, begin, start - begin)) return false;
    }
    return stop == text.size() || !IsWordChar(text, stop, CharLen(text, stop));
  }

  static void AppendText(std::string_view text, std::vector<Piece>* out) {
    if (!text.empty()) out->push_back({std::string(text), -1});
  }

  std::array<std::vector<Entry>, 256> by_first_byte_;
};

absl::StatusOr<AddedToken> ParseAddedToken(const json& entry, std::string_view path) {
  if (!entry.is_object()) return Invalid(path, "expected an object");
  AddedToken token;
  const json* id = Member(entry, "id");
  if (id == nullptr || !id->is_number_integer() || id->get<int64_t>() < 0 ||
      id->get<int64_t>() > std::numeric_limits<int32_t>::max()) {
    return Invalid(absl::StrCat(Sv(path), ".id"), "expected a non-negative integer");
  }
  token.id = static_cast<int32_t>(id->get<int64_t>());
  ASSIGN_OR_RETURN(const std::optional<std::string> content, StringMember(entry, "content", path));
  if (!content) return Invalid(absl::StrCat(Sv(path), ".content"), "expected a string");
  token.content = *content;
  ASSIGN_OR_RETURN(token.special, BoolMember(entry, "special", false, path));
  ASSIGN_OR_RETURN(token.single_word, BoolMember(entry, "single_word", false, path));
  ASSIGN_OR_RETURN(token.lstrip, BoolMember(entry, "lstrip", false, path));
  ASSIGN_OR_RETURN(token.rstrip, BoolMember(entry, "rstrip", false, path));
  ASSIGN_OR_RETURN(token.normalized, BoolMember(entry, "normalized", !token.special, path));
  return token;
}

// ---------------------------------------------------------------------------
// Post-processor and decoder
// ---------------------------------------------------------------------------

// Post-processors only add special tokens around a sequence (and fix
// offsets); Encode is defined as encoding without them, so the known ones are
// accepted and have no effect.
absl::Status CheckPostProcessor(const json& config, const std::string& path) {
  ASSIGN_OR_RETURN(const std::string type, TypeOf(config, path));
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, ArrayMember(config, "processors", path));
    for (size_t i = 0; i < list->size(); ++i) {
      RETURN_IF_ERROR(CheckPostProcessor((*list)[i], absl::StrCat(path, ".processors[", i, "]")));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel" || type == "TemplateProcessing" || type == "BertProcessing" ||
      type == "RobertaProcessing") {
    return absl::OkStatus();
  }
  return Invalid(path, absl::StrCat("unsupported post-processor type \"", type, "\""));
}

enum class DecoderKind {
  kJoinWithSpaces,  // no decoder: tokenizers joins the tokens with " "
  kConcatenate,     // Fuse, or an empty Sequence
  kByteLevel,       // bytes of each token (or its own text, see above)
  kFusedByteLevel,  // Fuse then ByteLevel: the joined text is one token
};

absl::StatusOr<DecoderKind> ParseDecoderSequence(const json& config, const std::string& path) {
  ASSIGN_OR_RETURN(const json* list, ArrayMember(config, "decoders", path));
  DecoderKind kind = DecoderKind::kConcatenate;
  bool fused = false;
  for (size_t i = 0; i < list->size(); ++i) {
    const std::string step_path = absl::StrCat(path, ".decoders[", i, "]");
    ASSIGN_OR_RETURN(const std::string type, TypeOf((*list)[i], step_path));
    if (type == "Fuse") {
      fused = fused || kind == DecoderKind::kConcatenate;  // after ByteLevel it changes nothing
    } else if (type == "ByteLevel" && kind == DecoderKind::kConcatenate) {
      kind = fused ? DecoderKind::kFusedByteLevel : DecoderKind::kByteLevel;
    } else {
      return Invalid(step_path, absl::StrCat("unsupported decoder \"", type,
                                             "\" in a Sequence (supported: one ByteLevel, Fuse)"));
    }
  }
  return kind;
}

absl::StatusOr<DecoderKind> ParseDecoder(const json& config, const std::string& path) {
  ASSIGN_OR_RETURN(const std::string type, TypeOf(config, path));
  if (type == "ByteLevel") return DecoderKind::kByteLevel;
  if (type == "Fuse") return DecoderKind::kConcatenate;
  if (type == "Sequence") return ParseDecoderSequence(config, path);
  return Invalid(path, absl::StrCat("unsupported decoder type \"", type,
                                    "\" (supported: ByteLevel, Fuse, Sequence)"));
}

}  // namespace

// ---------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<Normalizer> normalizer;       // null: none
  std::unique_ptr<PreTokenizer> pre_tokenizer;  // null: none
  DecoderKind decoder = DecoderKind::kJoinWithSpaces;
  std::vector<std::unique_ptr<AddedToken>> added_tokens;
  absl::flat_hash_map<std::string, int32_t> added_ids;
  absl::flat_hash_map<int32_t, const AddedToken*> added_by_id;
  absl::flat_hash_set<std::string> special_contents;
  // Tokens with normalized=false match the raw input; the others match the
  // normalized text, as in tokenizers' AddedVocabulary.
  AddedTokenSplitter raw_splitter;
  AddedTokenSplitter normalized_splitter;
  int64_t vocab_size = 0;

  absl::Status AddTokens(const json& list);
  void EncodeText(std::string_view text, std::vector<int32_t>* ids) const;
  const std::string* IdToToken(int32_t id) const;
};

absl::Status Tokenizer::Impl::AddTokens(const json& list) {
  for (size_t i = 0; i < list.size(); ++i) {
    ASSIGN_OR_RETURN(AddedToken token,
                     ParseAddedToken(list[i], absl::StrCat("added_tokens[", i, "]")));
    if (token.content.empty() || added_ids.contains(token.content)) continue;
    // Like tokenizers, a token already in the vocabulary keeps the model's id.
    token.id = model->TokenToId(token.content).value_or(token.id);
    const AddedToken* added = added_tokens.emplace_back(std::make_unique<AddedToken>(token)).get();
    added_ids[added->content] = added->id;
    added_by_id.try_emplace(added->id, added);
    if (added->special) special_contents.insert(added->content);
    vocab_size = std::max<int64_t>(vocab_size, int64_t{added->id} + 1);
  }
  for (const auto& token : added_tokens) {
    if (token->normalized) {
      normalized_splitter.Add(token.get(),
                              normalizer ? normalizer->Normalize(token->content) : token->content);
    } else {
      raw_splitter.Add(token.get(), token->content);
    }
  }
  return absl::OkStatus();
}

// Pre-tokenizes and runs the model on text free of added tokens.
void Tokenizer::Impl::EncodeText(std::string_view text, std::vector<int32_t>* ids) const {
  std::vector<std::string> words = {std::string(text)};
  if (pre_tokenizer != nullptr) pre_tokenizer->PreTokenize(&words);
  for (const std::string& word : words) {
    if (!word.empty()) model->Tokenize(word, ids);
  }
}

const std::string* Tokenizer::Impl::IdToToken(int32_t id) const {
  if (const auto it = added_by_id.find(id); it != added_by_id.end()) return &it->second->content;
  return model->IdToToken(id);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path));
  std::stringstream contents;
  contents << file.rdbuf();
  return FromJson(contents.str());
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json_text) {
  const json root = json::parse(json_text.begin(), json_text.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: not a valid JSON object");
  }
  auto impl = std::make_unique<Impl>();
  const json* model = Member(root, "model");
  if (model == nullptr) return Invalid("model", "missing");
  ASSIGN_OR_RETURN(impl->model, BpeModel::FromJson(*model));
  impl->vocab_size = int64_t{impl->model->max_id()} + 1;

  if (const json* normalizer = Member(root, "normalizer")) {
    ASSIGN_OR_RETURN(impl->normalizer, ParseNormalizer(*normalizer, "normalizer"));
  }
  if (const json* pre_tokenizer = Member(root, "pre_tokenizer")) {
    ASSIGN_OR_RETURN(impl->pre_tokenizer, ParsePreTokenizer(*pre_tokenizer, "pre_tokenizer"));
  }
  if (const json* post_processor = Member(root, "post_processor")) {
    RETURN_IF_ERROR(CheckPostProcessor(*post_processor, "post_processor"));
  }
  if (const json* decoder = Member(root, "decoder")) {
    ASSIGN_OR_RETURN(impl->decoder, ParseDecoder(*decoder, "decoder"));
  }
  if (const json* added = Member(root, "added_tokens")) {
    if (!added->is_array()) return Invalid("added_tokens", "expected an array");
    RETURN_IF_ERROR(impl->AddTokens(*added));
  }
  // truncation and padding are left to the serving layer.
  return absl::WrapUnique(new Tokenizer(std::move(impl)));
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  std::vector<Piece> raw_pieces;
  impl_->raw_splitter.Split(text, &raw_pieces);
  for (const Piece& raw : raw_pieces) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    const std::string normalized =
        impl_->normalizer ? impl_->normalizer->Normalize(raw.text) : raw.text;
    std::vector<Piece> pieces;
    impl_->normalized_splitter.Split(normalized, &pieces);
    for (const Piece& piece : pieces) {
      if (piece.id >= 0) {
        ids.push_back(piece.id);
      } else {
        impl_->EncodeText(piece.text, &ids);
      }
    }
  }
  return ids;
}

std::string Tokenizer::DecodeBytes(absl::Span<const int32_t> ids, bool skip_special) const {
  std::vector<const std::string*> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* token = impl_->IdToToken(id);
    if (token == nullptr) continue;
    // tokenizers tests the token's text, so a vocabulary entry spelled like
    // a special token is skipped as well.
    if (skip_special && impl_->special_contents.contains(*token)) continue;
    tokens.push_back(token);
  }
  std::string out;
  switch (impl_->decoder) {
    case DecoderKind::kByteLevel:
      for (const std::string* token : tokens) AppendByteLevelDecoded(*token, &out);
      break;
    case DecoderKind::kConcatenate:
      for (const std::string* token : tokens) out += *token;
      break;
    case DecoderKind::kFusedByteLevel: {
      std::string joined;
      for (const std::string* token : tokens) joined += *token;
      AppendByteLevelDecoded(joined, &out);
      break;
    }
    case DecoderKind::kJoinWithSpaces:
      out = absl::StrJoin(tokens, " ", [](std::string* o, const std::string* t) { *o += *t; });
      break;
  }
  return out;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special) const {
  return Utf8Lossy(DecodeBytes(ids, skip_special));
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (const auto it = impl_->added_ids.find(Sv(token)); it != impl_->added_ids.end()) {
    return it->second;
  }
  return impl_->model->TokenToId(token);
}

bool Tokenizer::IsSpecial(int32_t id) const {
  const auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && it->second->special;
}

}  // namespace mlaserve
