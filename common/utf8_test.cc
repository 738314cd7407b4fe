#include "common/utf8.h"

#include <random>

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

TEST(Utf8Test, LossyReplacesMaximalSubparts) {
  EXPECT_EQ(Utf8Lossy("abc"), "abc");
  EXPECT_EQ(Utf8Lossy("\xE4\xBD\xA0"), "\xE4\xBD\xA0");          // 你
  EXPECT_EQ(Utf8Lossy("\xE4\xBD"), "\xEF\xBF\xBD");              // one truncated sequence: one U+FFFD
  EXPECT_EQ(Utf8Lossy("\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // two stray continuation bytes
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98x"), "\xEF\xBF\xBDx");
  EXPECT_EQ(Utf8Lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
}

TEST(Utf8Test, IncompleteTail) {
  EXPECT_EQ(IncompleteUtf8Tail(""), 0u);
  EXPECT_EQ(IncompleteUtf8Tail("ab"), 0u);
  EXPECT_EQ(IncompleteUtf8Tail("a\xE4"), 1u);
  EXPECT_EQ(IncompleteUtf8Tail("a\xE4\xBD"), 2u);
  EXPECT_EQ(IncompleteUtf8Tail("a\xE4\xBD\xA0"), 0u);
  EXPECT_EQ(IncompleteUtf8Tail("\xF0\x9F\x98"), 3u);
  EXPECT_EQ(IncompleteUtf8Tail("a\x80"), 0u);  // can never complete
}

TEST(Utf8Test, AppendAndDecodeRoundTrip) {
  for (char32_t c : {U'a', U'\u00e9', U'\u4f60', U'\U0001F600', U'\U0010FFFF'}) {
    std::string s = "x";
    AppendUtf8(c, &s);
    const size_t len = Utf8CharLength(s, 1);
    EXPECT_EQ(len, s.size() - 1);
    EXPECT_EQ(Utf8DecodeAt(s, 1, len), c);
    EXPECT_EQ(Utf8CharStartBefore(s, s.size()), 1u);
  }
  EXPECT_EQ(Utf8CharLength("\x80", 0), 1u);  // an invalid byte is walked as one character
}

TEST(Utf8Test, WhitespaceRunsAreUnicode) {
  const std::string text = "\u3000 a\t\u00a0\u2009";
  EXPECT_EQ(WhitespaceRunEnd(text, 0), 4u);
  EXPECT_EQ(WhitespaceRunStart(text, text.size()), 5u);
  EXPECT_EQ(WhitespaceRunStart("a\x80 ", 3), 2u);  // stops at a malformed byte
  EXPECT_EQ(WhitespaceRunEnd("ab", 0), 0u);
}

// Splitting at the incomplete tail never changes the lossy result.
TEST(Utf8Test, ChunkedLossyEqualsWholeLossy) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bytes(rng() % 12, '\0');
    for (char& c : bytes) c = static_cast<char>(rng() % 4 == 0 ? rng() : 0xE0 + rng() % 0x20 - (rng() % 2) * 0x60);
    std::string chunked, pending;
    for (char c : bytes) {
      pending.push_back(c);
      const size_t keep = IncompleteUtf8Tail(pending);
      chunked += Utf8Lossy(std::string_view(pending).substr(0, pending.size() - keep));
      pending.erase(0, pending.size() - keep);
    }
    chunked += Utf8Lossy(pending);
    EXPECT_EQ(chunked, Utf8Lossy(bytes));
  }
}

}  // namespace
}  // namespace mlaserve
