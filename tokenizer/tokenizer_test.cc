#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/utf8.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace mlaserve {
namespace {

using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kTokenizerPath[] = "tests/testdata/tokenizer/tokenizer.json";
constexpr char kEncodingsPath[] = "tests/testdata/tokenizer/encodings.json";
constexpr char kReferencePath[] = "tests/testdata/tiny-deepseek-v3/reference.json";
constexpr char kModelTokenizerPath[] = "tests/testdata/tiny-deepseek-v3/tokenizer.json";

json ReadJson(const std::string& path) {
  std::ifstream file(path);
  EXPECT_TRUE(file.good()) << path;
  std::stringstream contents;
  contents << file.rdbuf();
  return json::parse(contents.str());
}

std::unique_ptr<Tokenizer> LoadFixture(const std::string& path = kTokenizerPath) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromFile(path);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

// ---------------------------------------------------------------------------
// The outside oracle: ids and decodings produced by `tokenizers`.
// ---------------------------------------------------------------------------

TEST(TokenizerFixtureTest, ReproducesEveryEncoding) {
  const std::unique_ptr<Tokenizer> tokenizer = LoadFixture();
  ASSERT_NE(tokenizer, nullptr);
  const json encodings = ReadJson(kEncodingsPath);
  ASSERT_FALSE(encodings.empty());
  for (const json& entry : encodings) {
    const std::string text = entry["text"];
    const std::vector<int32_t> expected = entry["ids"];
    const std::vector<int32_t> ids = tokenizer->Encode(text);
    EXPECT_EQ(ids, expected) << "text: " << text;
    EXPECT_EQ(tokenizer->Decode(expected), entry["decoded"].get<std::string>()) << text;
    EXPECT_EQ(tokenizer->DecodeBytes(expected), entry["decoded"].get<std::string>()) << text;
  }
}

TEST(TokenizerFixtureTest, DecodesReferenceGreedyTextWithReplacementCharacters) {
  const std::unique_ptr<Tokenizer> tokenizer = LoadFixture(kModelTokenizerPath);
  ASSERT_NE(tokenizer, nullptr);
  const json reference = ReadJson(kReferencePath);
  ASSERT_FALSE(reference.empty());
  for (const json& prompt : reference) {
    const std::vector<int32_t> greedy = prompt["greedy"];
    EXPECT_EQ(tokenizer->Decode(greedy), prompt["greedy_text"].get<std::string>());
  }
}

TEST(TokenizerFixtureTest, VocabularyAndSpecialTokens) {
  const std::unique_ptr<Tokenizer> tokenizer = LoadFixture();
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 1024);
  EXPECT_EQ(tokenizer->TokenToId("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_EQ(tokenizer->TokenToId("<｜Assistant｜>"), 3);
  EXPECT_EQ(tokenizer->TokenToId("no such token"), std::nullopt);
  EXPECT_TRUE(tokenizer->IsSpecial(1));
  EXPECT_FALSE(tokenizer->IsSpecial(68));
  EXPECT_FALSE(tokenizer->IsSpecial(5000));

  const std::vector<int32_t> ids = tokenizer->Encode("<｜User｜>Hi<｜Assistant｜>");
  ASSERT_GE(ids.size(), 3);
  EXPECT_EQ(ids.front(), 2);
  EXPECT_EQ(ids.back(), 3);
  EXPECT_EQ(tokenizer->Decode(ids, /*skip_special=*/true), "Hi");
  // Unknown ids decode to nothing.
  EXPECT_EQ(tokenizer->Decode({68, 99999, -1, 68}), tokenizer->Decode({68, 68}));
}

// The byte-level alphabet of GPT-2 (bytes_to_unicode), written out
// independently of the implementation.
std::string ByteLevelChar(unsigned char b) {
  std::vector<int> bytes;
  for (int c = '!'; c <= '~'; ++c) bytes.push_back(c);
  for (int c = 0xA1; c <= 0xAC; ++c) bytes.push_back(c);
  for (int c = 0xAE; c <= 0xFF; ++c) bytes.push_back(c);
  int code = b;
  if (std::find(bytes.begin(), bytes.end(), b) == bytes.end()) {
    int shifted = 0;
    for (int x = 0; x < b; ++x) {
      if (std::find(bytes.begin(), bytes.end(), x) == bytes.end()) ++shifted;
    }
    code = 256 + shifted;
  }
  std::string out;
  if (code < 0x80) {
    out.push_back(static_cast<char>(code));
  } else {
    out.push_back(static_cast<char>(0xC0 | (code >> 6)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  }
  return out;
}

std::vector<int32_t> ByteIds(const Tokenizer& tokenizer, const std::string& bytes) {
  std::vector<int32_t> ids;
  for (unsigned char b : bytes) {
    const std::optional<int32_t> id = tokenizer.TokenToId(ByteLevelChar(b));
    EXPECT_TRUE(id.has_value()) << static_cast<int>(b);
    ids.push_back(id.value_or(-1));
  }
  return ids;
}

TEST(TokenizerDecodeTest, ReplacesMaximalInvalidSubpartsLikeRust) {
  const std::unique_ptr<Tokenizer> tokenizer = LoadFixture();
  ASSERT_NE(tokenizer, nullptr);
  const std::string kFffd = "\xEF\xBF\xBD";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"ok", "ok"},
      {"\xE4\xBD", kFffd},  // truncated 3-byte sequence: one
      {"\xE4\xBD"
       "a",
       kFffd + "a"},  // interrupted: one
      {"\xF0\x9F\x98"
       "a",
       kFffd + "a"},                                        // truncated 4-byte sequence: one
      {"\xFF", kFffd},                                      // never valid
      {"\xC0\x80", kFffd + kFffd},                          // overlong: each byte
      {"\xED\xA0\x80", kFffd + kFffd + kFffd},              // surrogate: each byte
      {"\xF4\x90\x80\x80", kFffd + kFffd + kFffd + kFffd},  // above U+10FFFF
      {"\x80\x80"
       "b",
       kFffd + kFffd + "b"},  // stray continuations
      {"a\xE2\x82\xAC"
       "b",
       "a\xE2\x82\xAC"
       "b"},  // valid euro sign
  };
  for (const auto& [bytes, expected] : cases) {
    const std::vector<int32_t> ids = ByteIds(*tokenizer, bytes);
    EXPECT_EQ(tokenizer->DecodeBytes(ids), bytes);
    EXPECT_EQ(tokenizer->Decode(ids), expected);
  }
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

std::string RandomUnicode(std::mt19937& rng, int chars) {
  // Weighted towards what the pre-tokenizer treats specially: whitespace of
  // every kind, digits, CJK, punctuation, the Latin-1 letters its regex names.
  static const std::vector<std::pair<char32_t, char32_t>> kRanges = {
      {0x20, 0x7E},     {0x09, 0x0D},     {0x20, 0x20},     {0x30, 0x39},     {0xA0, 0x24F},
      {0x3000, 0x303F}, {0x3040, 0x30FF}, {0x4E00, 0x9FA5}, {0xFF00, 0xFFEF}, {0x1F600, 0x1F64F},
      {0x2000, 0x206F}, {0x0400, 0x04FF}, {0x0660, 0x0669}, {0x80, 0x9F},     {0x10000, 0x10FFFF},
  };
  std::string out;
  for (int i = 0; i < chars; ++i) {
    const auto& [lo, hi] = kRanges[rng() % kRanges.size()];
    char32_t c = lo + rng() % (hi - lo + 1);
    if (c >= 0xD800 && c <= 0xDFFF) c = 'x';
    AppendUtf8(c, &out);
  }
  return out;
}

TEST(TokenizerRoundTripTest, RandomUnicodeTextDecodesToItself) {
  const std::unique_ptr<Tokenizer> tokenizer = LoadFixture();
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 rng(1234);
  for (int i = 0; i < 300; ++i) {
    const std::string text = RandomUnicode(rng, 1 + rng() % 40);
    EXPECT_EQ(tokenizer->Decode(tokenizer->Encode(text)), text);
  }
}

TEST(TokenizerRoundTripTest, RandomBytesDecodeToThemselves) {
  const std::unique_ptr<Tokenizer> tokenizer = LoadFixture();
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 rng(99);
  for (int i = 0; i < 300; ++i) {
    std::string bytes(1 + rng() % 40, '\0');
    for (char& b : bytes) b = static_cast<char>(rng() % 256);
    EXPECT_EQ(tokenizer->DecodeBytes(tokenizer->Encode(bytes)), bytes);
  }
}

TEST(TokenizerRoundTripTest, ConcurrentEncodingMatchesSerial) {
  const std::unique_ptr<Tokenizer> tokenizer = LoadFixture();
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 rng(7);
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back(RandomUnicode(rng, 30));
  std::vector<std::vector<int32_t>> serial;
  for (const std::string& text : texts) serial.push_back(tokenizer->Encode(text));

  std::vector<std::vector<std::vector<int32_t>>> results(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        results[t].clear();
        for (const std::string& text : texts) results[t].push_back(tokenizer->Encode(text));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const auto& result : results) EXPECT_EQ(result, serial);
}

// ---------------------------------------------------------------------------
// Small hand-built tokenizers: each piece the pre-tokenizer produces becomes
// exactly one token, so decoding the ids one by one shows the pieces.
// ---------------------------------------------------------------------------

std::vector<std::string> Chars(const std::string& s) {
  std::vector<std::string> chars;
  for (size_t i = 0; i < s.size();) {
    size_t n = 1;
    while (i + n < s.size() && (static_cast<unsigned char>(s[i + n]) & 0xC0) == 0x80) ++n;
    chars.push_back(s.substr(i, n));
    i += n;
  }
  return chars;
}

// A BPE model whose vocabulary holds every substring of `sources`, with a
// merge for every way to cut each one: any piece drawn from a source merges
// into a single token.
json SubstringModel(const std::vector<std::string>& sources) {
  std::set<std::string> substrings;
  for (const std::string& source : sources) {
    const std::vector<std::string> chars = Chars(source);
    for (size_t i = 0; i < chars.size(); ++i) {
      std::string s;
      for (size_t j = i; j < chars.size(); ++j) substrings.insert(s += chars[j]);
    }
  }
  json vocab = json::object();
  for (const std::string& s : substrings) vocab[s] = static_cast<int>(vocab.size()) + 10;
  std::vector<std::string> by_length(substrings.begin(), substrings.end());
  std::stable_sort(by_length.begin(), by_length.end(),
                   [](const auto& a, const auto& b) { return Chars(a).size() < Chars(b).size(); });
  json merges = json::array();
  for (const std::string& s : by_length) {
    const std::vector<std::string> chars = Chars(s);
    std::string left;
    for (size_t k = 1; k < chars.size(); ++k) {
      left += chars[k - 1];
      merges.push_back(json::array({left, s.substr(left.size())}));
    }
  }
  return {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
}

std::string TokenizerJson(const json& pre_tokenizer, const std::vector<std::string>& sources,
                          const json& overrides = json::object()) {
  json config = {{"version", "1.0"},
                 {"added_tokens", json::array()},
                 {"normalizer", nullptr},
                 {"pre_tokenizer", pre_tokenizer},
                 {"post_processor", nullptr},
                 {"decoder", nullptr},
                 {"model", SubstringModel(sources)}};
  config.merge_patch(overrides);
  return config.dump();
}

std::unique_ptr<Tokenizer> Build(const std::string& json_text) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromJson(json_text);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

std::vector<std::string> Pieces(const Tokenizer& tokenizer, const std::string& text) {
  std::vector<std::string> pieces;
  for (int32_t id : tokenizer.Encode(text)) pieces.push_back(tokenizer.DecodeBytes({id}));
  return pieces;
}

// The pieces `text` splits into under one Split pre-tokenizer.
std::vector<std::string> SplitPieces(const json& pattern, const std::string& behavior, bool invert,
                                     const std::string& text) {
  const json split = {
      {"type", "Split"}, {"pattern", pattern}, {"behavior", behavior}, {"invert", invert}};
  const std::unique_ptr<Tokenizer> tokenizer = Build(TokenizerJson(split, {text}));
  if (tokenizer == nullptr) return {"<failed to load>"};
  return Pieces(*tokenizer, text);
}

const json kDash = {{"Regex", "-"}};

TEST(SplitTest, Removed) {
  EXPECT_THAT(SplitPieces(kDash, "Removed", false, "ab-cd--e"), ElementsAre("ab", "cd", "e"));
}

TEST(SplitTest, Isolated) {
  EXPECT_THAT(SplitPieces(kDash, "Isolated", false, "ab-cd--e"),
              ElementsAre("ab", "-", "cd", "-", "-", "e"));
}

TEST(SplitTest, MergedWithPrevious) {
  EXPECT_THAT(SplitPieces(kDash, "MergedWithPrevious", false, "ab-cd--e"),
              ElementsAre("ab-", "cd-", "-", "e"));
  EXPECT_THAT(SplitPieces(kDash, "MergedWithPrevious", false, "-ab"), ElementsAre("-", "ab"));
}

TEST(SplitTest, MergedWithNext) {
  EXPECT_THAT(SplitPieces(kDash, "MergedWithNext", false, "ab-cd--e"),
              ElementsAre("ab", "-cd", "-", "-e"));
  EXPECT_THAT(SplitPieces(kDash, "MergedWithNext", false, "ab-"), ElementsAre("ab", "-"));
}

TEST(SplitTest, Contiguous) {
  EXPECT_THAT(SplitPieces(kDash, "Contiguous", false, "ab-cd--e"),
              ElementsAre("ab", "-", "cd", "--", "e"));
}

TEST(SplitTest, Invert) {
  // Inverted, the gaps are the delimiters: Removed keeps only the dashes.
  EXPECT_THAT(SplitPieces(kDash, "Removed", true, "ab-cd--e"), ElementsAre("-", "-", "-"));
  EXPECT_THAT(SplitPieces(kDash, "MergedWithPrevious", true, "ab-cd--e"),
              ElementsAre("ab", "-cd", "-", "-e"));
  EXPECT_THAT(SplitPieces(kDash, "Isolated", true, "ab-cd--e"),
              ElementsAre("ab", "-", "cd", "-", "-", "e"));
}

TEST(SplitTest, StringPatternIsLiteral) {
  EXPECT_THAT(SplitPieces({{"String", "."}}, "Isolated", false, "a.b"), ElementsAre("a", ".", "b"));
  EXPECT_THAT(SplitPieces({{"Regex", "."}}, "Removed", false, "a.b"), IsEmpty());
}

// ---------------------------------------------------------------------------
// Other pre-tokenizers, normalizers, model options, added tokens.
// ---------------------------------------------------------------------------

TEST(DigitsTest, IndividualAndContiguous) {
  const std::string text = "ab123c4\u0663";
  const json individual = {{"type", "Digits"}, {"individual_digits", true}};
  const json contiguous = {{"type", "Digits"}, {"individual_digits", false}};
  const std::unique_ptr<Tokenizer> a = Build(TokenizerJson(individual, {text}));
  const std::unique_ptr<Tokenizer> b = Build(TokenizerJson(contiguous, {text}));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_THAT(Pieces(*a, text), ElementsAre("ab", "1", "2", "3", "c", "4", "\u0663"));
  EXPECT_THAT(Pieces(*b, text), ElementsAre("ab", "123", "c", "4\u0663"));
}

TEST(SequenceTest, AppliesStepsInOrder) {
  const json sequence = {{"type", "Sequence"},
                         {"pretokenizers",
                          {{{"type", "Digits"}, {"individual_digits", false}},
                           {{"type", "Split"},
                            {"pattern", {{"String", " "}}},
                            {"behavior", "Removed"},
                            {"invert", false}}}}};
  const std::string text = "ab12 cd 3";
  const std::unique_ptr<Tokenizer> tokenizer = Build(TokenizerJson(sequence, {text}));
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(Pieces(*tokenizer, text), ElementsAre("ab", "12", "cd", "3"));
}

std::string ByteLevelString(const std::string& text) {
  std::string out;
  for (unsigned char b : text) out += ByteLevelChar(b);
  return out;
}

TEST(ByteLevelTest, RegexAndPrefixSpace) {
  const std::string text = "a   b";
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  const std::unique_ptr<Tokenizer> tokenizer = Build(TokenizerJson(
      byte_level, {ByteLevelString(" " + text)}, {{"decoder", {{"type", "ByteLevel"}}}}));
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(Pieces(*tokenizer, text), ElementsAre(" a", "  ", " b"));
  EXPECT_EQ(tokenizer->Decode(tokenizer->Encode(text)), " " + text);
}

TEST(NormalizerTest, PrependAndReplace) {
  const json normalizer = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", "_"}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "_"}}}}};
  const std::unique_ptr<Tokenizer> tokenizer =
      Build(TokenizerJson(nullptr, {"_a_b"}, {{"normalizer", normalizer}}));
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(Pieces(*tokenizer, "a b"), ElementsAre("_a_b"));
}

TEST(BpeTest, UnknownCharactersUseUnkTokenWhenConfigured) {
  const json split = {{"type", "Split"},
                      {"pattern", {{"String", " "}}},
                      {"behavior", "Removed"},
                      {"invert", false}};
  const std::unique_ptr<Tokenizer> plain = Build(TokenizerJson(split, {"ab", "<unk>"}));
  ASSERT_NE(plain, nullptr);
  // Without an unknown token the characters are dropped, and what is left
  // still merges, as in tokenizers.
  EXPECT_THAT(Pieces(*plain, "a??b"), ElementsAre("ab"));

  const std::unique_ptr<Tokenizer> fused = Build(TokenizerJson(
      split, {"ab", "<unk>"}, {{"model", {{"unk_token", "<unk>"}, {"fuse_unk", true}}}}));
  ASSERT_NE(fused, nullptr);
  EXPECT_THAT(Pieces(*fused, "a??b"), ElementsAre("a", "<unk>", "b"));

  const std::unique_ptr<Tokenizer> unfused =
      Build(TokenizerJson(split, {"ab", "<unk>"}, {{"model", {{"unk_token", "<unk>"}}}}));
  ASSERT_NE(unfused, nullptr);
  EXPECT_THAT(Pieces(*unfused, "a??b"), ElementsAre("a", "<unk>", "<unk>", "b"));
}

TEST(BpeTest, ByteFallbackAndSubwordAffixes) {
  const json fallback = {{"model",
                          {{"type", "BPE"},
                           {"vocab", {{"a", 0}, {"<0x3F>", 1}, {"<0xC3>", 2}}},
                           {"merges", json::array()},
                           {"byte_fallback", true}}}};
  const std::unique_ptr<Tokenizer> bytes = Build(fallback.dump());
  ASSERT_NE(bytes, nullptr);
  // "?" is one byte; "é" (C3 A9) lacks <0xA9>, so it is dropped whole.
  EXPECT_THAT(bytes->Encode("a?\u00e9a"), ElementsAre(0, 1, 0));

  const json affixes = {{"model",
                         {{"type", "BPE"},
                          {"vocab", {{"a", 0}, {"##b", 1}, {"##c</w>", 2}, {"ab", 3}}},
                          {"merges", json::array({"a ##b"})},
                          {"continuing_subword_prefix", "##"},
                          {"end_of_word_suffix", "</w>"}}}};
  const std::unique_ptr<Tokenizer> subwords = Build(affixes.dump());
  ASSERT_NE(subwords, nullptr);
  EXPECT_THAT(subwords->Encode("abc"), ElementsAre(3, 2));
}

TEST(BpeTest, MergesInRankOrderAndAcceptsBothMergeFormats) {
  // "abc": (b,c) outranks (a,b), so the result is a + bc even though ab exists.
  const json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}};
  const json pairs = json::array({json::array({"b", "c"}), json::array({"a", "b"})});
  for (const json& merges : {json::array({"b c", "a b"}), pairs}) {
    const json config = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
    const std::unique_ptr<Tokenizer> tokenizer = Build(config.dump());
    ASSERT_NE(tokenizer, nullptr);
    EXPECT_THAT(tokenizer->Encode("abc"), ElementsAre(0, 4));
    EXPECT_THAT(tokenizer->Encode("abab"), ElementsAre(3, 3));
    EXPECT_EQ(tokenizer->Decode({0, 4}), "a bc");  // no decoder: joined with spaces
  }
}

json AddedToken(int id, const std::string& content, bool special, json flags = json::object()) {
  json token = {
      {"id", id},        {"content", content}, {"special", special}, {"single_word", false},
      {"lstrip", false}, {"rstrip", false},    {"normalized", false}};
  token.merge_patch(flags);
  return token;
}

TEST(AddedTokensTest, LongestMatchFirstAndStripping) {
  const std::string text = "x <a> <ab>y<a>b";
  const json added =
      json::array({AddedToken(1, "<a>", true), AddedToken(2, "<ab>", false),
                   AddedToken(3, "<a>b", false, {{"lstrip", true}, {"rstrip", true}})});
  const std::unique_ptr<Tokenizer> tokenizer =
      Build(TokenizerJson(nullptr, {"x ", " y"}, {{"added_tokens", added}}));
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(tokenizer->Encode("x <a> <ab>y"),
              ElementsAre(tokenizer->TokenToId("x ").value(), 1, tokenizer->TokenToId(" ").value(),
                          2, tokenizer->TokenToId("y").value()));
  // lstrip/rstrip swallow the surrounding spaces into the added token.
  EXPECT_THAT(tokenizer->Encode("x  <a>b  y"),
              ElementsAre(tokenizer->TokenToId("x").value(), 3, tokenizer->TokenToId("y").value()));
  EXPECT_TRUE(tokenizer->IsSpecial(1));
  EXPECT_FALSE(tokenizer->IsSpecial(2));
  EXPECT_EQ(tokenizer->Decode(tokenizer->Encode(text), /*skip_special=*/true),
            tokenizer->Decode(tokenizer->Encode("x  <ab>y<a>b")));
}

TEST(AddedTokensTest, SingleWordRequiresWordBoundaries) {
  const json added = json::array({AddedToken(1, "cat", false, {{"single_word", true}})});
  const std::unique_ptr<Tokenizer> tokenizer =
      Build(TokenizerJson(nullptr, {"concatenate", " cat "}, {{"added_tokens", added}}));
  ASSERT_NE(tokenizer, nullptr);
  // "cat" is also in the model's vocabulary, so (as in tokenizers) the added
  // token takes the model's id rather than the one in added_tokens.
  const int32_t cat = tokenizer->TokenToId("cat").value();
  EXPECT_NE(cat, 1);
  EXPECT_THAT(tokenizer->Encode(" cat "), ElementsAre(tokenizer->TokenToId(" ").value(), cat,
                                                      tokenizer->TokenToId(" ").value()));
  EXPECT_THAT(tokenizer->Encode("concatenate"),
              ElementsAre(tokenizer->TokenToId("concatenate").value()));
}

TEST(AddedTokensTest, VocabSizeCountsAddedTokens) {
  const json added = json::array({AddedToken(5000, "<extra>", true)});
  const std::unique_ptr<Tokenizer> tokenizer =
      Build(TokenizerJson(nullptr, {"ab"}, {{"added_tokens", added}}));
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 5001);
  EXPECT_THAT(tokenizer->Encode("a<extra>b"), ElementsAre(tokenizer->TokenToId("a").value(), 5000,
                                                          tokenizer->TokenToId("b").value()));
}

TEST(AddedTokensTest, NormalizedTokensMatchTheNormalizedText) {
  const json normalizer = {{"type", "Replace"}, {"pattern", {{"String", "a"}}}, {"content", "b"}};
  for (const bool normalized : {true, false}) {
    const json added = json::array({AddedToken(100, "bb", false, {{"normalized", normalized}})});
    const std::unique_ptr<Tokenizer> tokenizer =
        Build(TokenizerJson(nullptr, {"b"}, {{"normalizer", normalizer}, {"added_tokens", added}}));
    ASSERT_NE(tokenizer, nullptr);
    // Only a normalized token sees "ab" as "bb".
    EXPECT_EQ(tokenizer->Encode("ab") == std::vector<int32_t>{100}, normalized);
    EXPECT_THAT(tokenizer->Encode("bb"), ElementsAre(100));
  }
}

TEST(WhitespaceTest, WhitespaceAndWhitespaceSplit) {
  const std::string text = "hi, there!\u3000x";
  const std::unique_ptr<Tokenizer> words = Build(TokenizerJson({{"type", "Whitespace"}}, {text}));
  const std::unique_ptr<Tokenizer> spaces =
      Build(TokenizerJson({{"type", "WhitespaceSplit"}}, {text}));
  ASSERT_NE(words, nullptr);
  ASSERT_NE(spaces, nullptr);
  EXPECT_THAT(Pieces(*words, text), ElementsAre("hi", ",", "there", "!", "x"));
  EXPECT_THAT(Pieces(*spaces, text), ElementsAre("hi,", "there!", "x"));
}

TEST(DecoderTest, SequenceOfDecoders) {
  json config = ReadJson(kTokenizerPath);
  const std::unique_ptr<Tokenizer> fixture = Build(config.dump());
  ASSERT_NE(fixture, nullptr);
  const std::vector<int32_t> ids = fixture->Encode("<｜User｜> a");

  config["decoder"] = {{"type", "Sequence"}, {"decoders", json::array({{{"type", "ByteLevel"}}})}};
  const std::unique_ptr<Tokenizer> sequence = Build(config.dump());
  ASSERT_NE(sequence, nullptr);
  EXPECT_EQ(sequence->Decode(ids), "<｜User｜> a");

  // Fused first, the whole text is one token, which has characters outside
  // the byte alphabet, so it is kept as it is.
  config["decoder"]["decoders"] = json::array({{{"type", "Fuse"}}, {{"type", "ByteLevel"}}});
  const std::unique_ptr<Tokenizer> fused = Build(config.dump());
  ASSERT_NE(fused, nullptr);
  EXPECT_EQ(fused->Decode(ids), "<｜User｜>" + ByteLevelString(" a"));

  config["decoder"] = nullptr;
  const std::unique_ptr<Tokenizer> none = Build(config.dump());
  ASSERT_NE(none, nullptr);
  EXPECT_EQ(none->Decode(ids), "<｜User｜> " + ByteLevelString(" ") + " a");
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

absl::Status LoadError(const std::string& json_text) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromJson(json_text);
  return tokenizer.status();
}

void ExpectInvalid(const absl::Status& status, const std::string& needle) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(needle));
}

TEST(TokenizerErrorTest, BadJsonAndModel) {
  ExpectInvalid(LoadError("{not json"), "JSON");
  ExpectInvalid(LoadError("[]"), "JSON");
  ExpectInvalid(LoadError(R"({"normalizer": null})"), "model");
  ExpectInvalid(LoadError(R"({"model": {"type": "WordPiece", "vocab": {}}})"), "WordPiece");
  ExpectInvalid(LoadError(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})"),
                "merges[0]");
  ExpectInvalid(LoadError(R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}})"),
                "model.vocab");
  EXPECT_EQ(Tokenizer::FromFile("/no/such/tokenizer.json").status().code(),
            absl::StatusCode::kNotFound);
}

std::string WithPreTokenizer(const json& pre_tokenizer) {
  return TokenizerJson(pre_tokenizer, {"ab"});
}

json SplitWith(const std::string& regex) {
  return {{"type", "Split"},
          {"pattern", {{"Regex", regex}}},
          {"behavior", "Isolated"},
          {"invert", false}};
}

// The regex dialect itself is tested in onig_regex_test; here, that its
// errors reach the caller with the JSON path of the pattern.
TEST(TokenizerErrorTest, BadRegexIsReportedWithItsPath) {
  ExpectInvalid(LoadError(WithPreTokenizer(SplitWith("(ab"))), "pre_tokenizer.pattern.Regex");
  ExpectInvalid(LoadError(WithPreTokenizer(SplitWith("[a-"))), "pre_tokenizer.pattern.Regex");
  ExpectInvalid(LoadError(WithPreTokenizer(SplitWith("(?<=a)b"))), "lookaround");
  ExpectInvalid(LoadError(WithPreTokenizer(SplitWith("(a)\\1"))), "Regex");
  const json nested = {{"type", "Sequence"}, {"pretokenizers", {SplitWith("ok"), SplitWith(")")}}};
  ExpectInvalid(LoadError(WithPreTokenizer(nested)), "pretokenizers[1]");
}

TEST(TokenizerErrorTest, UnsupportedComponentsAreNamed) {
  ExpectInvalid(LoadError(WithPreTokenizer({{"type", "Metaspace"}})), "Metaspace");
  ExpectInvalid(LoadError(WithPreTokenizer(
                    {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}})),
                "Sideways");
  ExpectInvalid(LoadError(TokenizerJson(nullptr, {"ab"}, {{"normalizer", {{"type", "NFC"}}}})),
                "NFC");
  ExpectInvalid(LoadError(TokenizerJson(nullptr, {"ab"}, {{"decoder", {{"type", "WordPiece"}}}})),
                "WordPiece");
  ExpectInvalid(
      LoadError(TokenizerJson(nullptr, {"ab"}, {{"post_processor", {{"type", "Mystery"}}}})),
      "Mystery");
  ExpectInvalid(LoadError(TokenizerJson(nullptr, {"ab"}, {{"model", {{"dropout", 0.1}}}})),
                "dropout");
  // Post-processors that only add special tokens are accepted.
  EXPECT_TRUE(Tokenizer::FromJson(
                  TokenizerJson(nullptr, {"ab"}, {{"post_processor", {{"type", "ByteLevel"}}}}))
                  .ok());
}

}  // namespace
}  // namespace mlaserve
