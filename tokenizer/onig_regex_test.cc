#include "tokenizer/onig_regex.h"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mlaserve::tokenizer_internal {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;

std::unique_ptr<OnigRegex> CompileOk(std::string_view pattern) {
  absl::StatusOr<std::unique_ptr<OnigRegex>> regex = OnigRegex::Compile(pattern);
  EXPECT_TRUE(regex.ok()) << pattern << ": " << regex.status();
  return regex.ok() ? *std::move(regex) : nullptr;
}

// The non-empty segments of `text` cut by `pattern`; the gaps only unless
// `keep_matches`. With matches kept these are the pieces of a Split with the
// Isolated behaviour, without them those of Removed.
std::vector<std::string> Cut(std::string_view pattern, const std::string& text, bool keep_matches) {
  const std::unique_ptr<OnigRegex> regex = CompileOk(pattern);
  if (regex == nullptr) return {"<failed to compile>"};
  std::vector<std::string> pieces;
  for (const Segment& s : FindSegments(*regex, text, /*invert=*/false)) {
    if (s.end > s.begin && (keep_matches || !s.is_match)) {
      pieces.push_back(text.substr(s.begin, s.end - s.begin));
    }
  }
  return pieces;
}

std::vector<std::string> Pieces(std::string_view pattern, const std::string& text) {
  return Cut(pattern, text, /*keep_matches=*/true);
}

std::vector<std::string> Gaps(std::string_view pattern, const std::string& text) {
  return Cut(pattern, text, /*keep_matches=*/false);
}

// ---------------------------------------------------------------------------
// Translation of Oniguruma syntax
// ---------------------------------------------------------------------------

TEST(OnigRegexTest, UnicodeEscapesAndClasses) {
  EXPECT_THAT(Pieces("[\\u4e00-\\u9fa5]+", "ab你好cd"), ElementsAre("ab", "你好", "cd"));
  EXPECT_THAT(Pieces("\\p{N}{1,3}", "x1234567"), ElementsAre("x", "123", "456", "7"));
}

TEST(OnigRegexTest, WhitespaceClassIsUnicode) {
  // U+3000 and U+00A0 are whitespace for Oniguruma, not for RE2's \s.
  EXPECT_THAT(Gaps("\\s+", "a\u3000b\u00a0\u2009c d"), ElementsAre("a", "b", "c", "d"));
  EXPECT_THAT(Gaps("[^\\s]+", "a\u3000b"), ElementsAre("\u3000"));
  EXPECT_THAT(Gaps("[\\S]+", "ab\u00a0c"), ElementsAre("\u00a0"));
  EXPECT_THAT(Pieces("\\d+", "a\u0663\u0664b"), ElementsAre("a", "\u0663\u0664", "b"));
}

TEST(OnigRegexTest, DollarMatchesAtLineEnds) {
  EXPECT_THAT(Pieces("x$", "axx\nbx"), ElementsAre("ax", "x", "\nb", "x"));
}

TEST(OnigRegexTest, LiteralMatchesVerbatim) {
  absl::StatusOr<std::unique_ptr<OnigRegex>> literal = OnigRegex::Literal(".");
  ASSERT_TRUE(literal.ok()) << literal.status();
  EXPECT_THAT((*literal)->FindAll("a.b"), ElementsAre(Pair(1, 2)));
  EXPECT_THAT(Gaps(".", "a.b"), IsEmpty());
}

TEST(OnigRegexTest, EmptyMatchesSkipOnlyWhereThePreviousMatchEnded) {
  EXPECT_THAT(CompileOk("x*")->FindAll("ab"), ElementsAre(Pair(0, 0), Pair(1, 1), Pair(2, 2)));
  EXPECT_THAT(CompileOk("a*")->FindAll("aab"), ElementsAre(Pair(0, 2), Pair(3, 3)));
}

// ---------------------------------------------------------------------------
// Lookahead emulation, checked against a backtracking engine's results.
// ---------------------------------------------------------------------------

constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr char kDeepSeekPattern[] =
    "[\\r\\n]|\\s?[A-Za-z\\u00C0-\\u024F]+|\\s?[!-/:-~\\u3000-\\u303F\\uFF00-\\uFFEF]+|\\s+$|"
    "\\s+(?!\\S)|\\s";

std::vector<std::string> Gpt2(const std::string& text) { return Pieces(kGpt2Pattern, text); }

TEST(LookaheadTest, SpaceRunGivesBackOneSpaceBeforeAWord) {
  EXPECT_THAT(Gpt2("a   b"), ElementsAre("a", "  ", " b"));
  EXPECT_THAT(Gpt2("  x"), ElementsAre(" ", " x"));
}

TEST(LookaheadTest, TrailingSpacesStayTogether) {
  EXPECT_THAT(Gpt2("a  "), ElementsAre("a", "  "));
  EXPECT_THAT(Gpt2("it's   12  "), ElementsAre("it", "'s", "  ", " 12", "  "));
}

TEST(LookaheadTest, FailedLookaheadFallsThroughToLaterAlternatives) {
  // At the second U+3000, `\s+(?!\S)` has nothing to give back, so `\s+` wins.
  EXPECT_THAT(Gpt2("a\u3000\u3000b"), ElementsAre("a", "\u3000", "\u3000", "b"));
  EXPECT_THAT(Gpt2("x \u00a0y"), ElementsAre("x", " ", "\u00a0", "y"));
  EXPECT_THAT(Gpt2("hello world  \n\n  foo\t\tbar "),
              ElementsAre("hello", " world", "  \n\n ", " foo", "\t", "\t", "bar", " "));
}

TEST(LookaheadTest, DeepSeekWordPattern) {
  EXPECT_THAT(Pieces(kDeepSeekPattern, "a   b"), ElementsAre("a", "  ", " b"));
  EXPECT_THAT(Pieces(kDeepSeekPattern, "a \n b  "), ElementsAre("a", " ", "\n", " b", "  "));
  EXPECT_THAT(Pieces(kDeepSeekPattern, "foo  \nbar"), ElementsAre("foo", "  ", "\n", "bar"));
}

TEST(LookaheadTest, PositiveLookaheadAndStar) {
  // `a*(?=b)`: the run of a's that is followed by b, empty runs included.
  EXPECT_THAT(Pieces("a+(?=b)|c", "aaxaabc"), ElementsAre("aax", "aa", "b", "c"));
  EXPECT_THAT(Gaps("x*(?!y)", "xxyz"), ElementsAre("xy", "z"));
}

TEST(LookaheadTest, DeepSeekV3WordPattern) {
  // The word pattern of DeepSeek-V3's own tokenizer.json; the expected pieces
  // come from Python's `regex` module, a backtracking engine with lookahead.
  const std::string pattern =
      "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|"
      "[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|"
      "\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
  EXPECT_THAT(
      Pieces(pattern, "Hello, world!  foo.bar\n\n  x  "),
      ElementsAre("Hello", ",", " world", "!", " ", " foo", ".bar", "\n\n", " ", " x", "  "));
  EXPECT_THAT(Pieces(pattern, "na\u00efve caf\u00e9\t\tdone"),
              ElementsAre("na\u00efve", " caf\u00e9", "\t", "\tdone"));
  EXPECT_THAT(Pieces(pattern, "a  +b"), ElementsAre("a", " ", " +", "b"));
}

// ---------------------------------------------------------------------------
// Errors: what cannot be reproduced exactly is rejected at compile time.
// ---------------------------------------------------------------------------

void ExpectRejected(std::string_view pattern, const std::string& needle) {
  const absl::Status status = OnigRegex::Compile(pattern).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << pattern << ": " << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(needle)) << pattern;
}

TEST(OnigRegexErrorTest, BadOrUnsupportedPatterns) {
  ExpectRejected("(ab", "");
  ExpectRejected("[a-", "");
  ExpectRejected("(?<=a)b", "lookaround");
  ExpectRejected("a(?!b)c", "lookaround");
  ExpectRejected("(?:\\s+(?!\\S))", "lookaround");
  ExpectRejected("ab+(?!\\S)", "lookaround");
  ExpectRejected("a++", "possessive");
  ExpectRejected("(?>a)", "group");
  ExpectRejected("(a)\\1", "");
}

}  // namespace
}  // namespace mlaserve::tokenizer_internal
