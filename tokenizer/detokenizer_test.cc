#include "tokenizer/detokenizer.h"

#include <random>

#include "common/utf8.h"
#include "gtest/gtest.h"

namespace mlaserve {
namespace {

class DetokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = Tokenizer::FromFile("tests/testdata/tiny-deepseek-v3/tokenizer.json");
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = *std::move(t);
  }
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(DetokenizerTest, DeltasConcatenateToTheLossyDecodingForRandomIds) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int32_t> ids(1 + rng() % 30);
    for (int32_t& id : ids) id = rng() % tokenizer_->vocab_size();
    Detokenizer detok(*tokenizer_, {});
    std::string text;
    for (int32_t id : ids) text += detok.Append(id);
    text += detok.Flush();
    EXPECT_EQ(text, tokenizer_->Decode(ids));
  }
}

TEST_F(DetokenizerTest, HoldsBackIncompleteCharacters) {
  std::vector<int32_t> ids = tokenizer_->Encode("emoji \xF0\x9F\x98\x80 ok");
  Detokenizer detok(*tokenizer_, {});
  std::string text;
  for (int32_t id : ids) {
    std::string delta = detok.Append(id);
    EXPECT_EQ(Utf8Lossy(delta), delta) << "a delta must be valid UTF-8 on its own";
    text += delta;
  }
  EXPECT_EQ(text + detok.Flush(), "emoji \xF0\x9F\x98\x80 ok");
}

TEST_F(DetokenizerTest, StopsBeforeStopStringSpanningTokens) {
  std::vector<int32_t> ids = tokenizer_->Encode("attention latent cache and more");
  Detokenizer detok(*tokenizer_, {"nt ca", "zzz"});
  std::string text;
  for (int32_t id : ids) {
    text += detok.Append(id);
    if (detok.stopped()) break;
  }
  EXPECT_TRUE(detok.stopped());
  EXPECT_EQ(text + detok.Flush(), "attention late");
}

TEST_F(DetokenizerTest, NoStopMeansEverythingReleased) {
  std::vector<int32_t> ids = tokenizer_->Encode("prefix prefix");
  Detokenizer detok(*tokenizer_, {"xyz"});
  std::string text;
  for (int32_t id : ids) text += detok.Append(id);
  EXPECT_FALSE(detok.stopped());
  EXPECT_EQ(text + detok.Flush(), "prefix prefix");
}

}  // namespace
}  // namespace mlaserve
