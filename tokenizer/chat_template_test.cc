#include "tokenizer/chat_template.h"

#include <algorithm>
#include <memory>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mlaserve {
namespace {

using ::testing::ElementsAre;

constexpr char kModelDir[] = "tests/testdata/tiny-deepseek-v3/";
constexpr char kBos[] = "<｜begin▁of▁sentence｜>";

class ChatTemplateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
        Tokenizer::FromFile(std::string(kModelDir) + "tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = *std::move(tokenizer);
    absl::StatusOr<ModelConfig> config = LoadModelConfig(std::string(kModelDir) + "config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
  }

  std::unique_ptr<Tokenizer> tokenizer_;
  ModelConfig config_;
};

TEST(RenderChatTest, OneUserTurnOpensTheAssistantTurn) {
  EXPECT_EQ(RenderChat({{ChatRole::kUser, "Hi"}}, kBos), "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>");
}

TEST(RenderChatTest, SystemMessagesGoFirstJoinedByBlankLines) {
  const std::vector<ChatMessage> messages = {
      {ChatRole::kSystem, "Be brief."}, {ChatRole::kUser, "Hi"},  {ChatRole::kAssistant, "Hello."},
      {ChatRole::kSystem, "Be kind."},  {ChatRole::kUser, "Bye"},
  };
  EXPECT_EQ(RenderChat(messages, kBos),
            "<｜begin▁of▁sentence｜>Be brief.\n\nBe kind."
            "<｜User｜>Hi<｜Assistant｜>Hello.<｜end▁of▁sentence｜>"
            "<｜User｜>Bye<｜Assistant｜>");
}

TEST(RenderChatTest, WithoutBosTextStartsWithTheSystemPrompt) {
  EXPECT_EQ(RenderChat({{ChatRole::kSystem, "S"}, {ChatRole::kUser, "U"}}, ""), "S<｜User｜>U<｜Assistant｜>");
}

TEST_F(ChatTemplateTest, MarkersEncodeToTheirAddedTokens) {
  // Hand-checked against the fixture's tokenizer.json: <｜User｜> is 2 and
  // <｜Assistant｜> 3.
  EXPECT_THAT(tokenizer_->Encode("<｜User｜>What is MLA?<｜Assistant｜>"),
              ElementsAre(2, 58, 75, 546, 224, 76, 86, 224, 48, 47, 36, 34, 3));
}

TEST_F(ChatTemplateTest, EncodesOneTurnAfterTheBosToken) {
  ASSERT_EQ(config_.bos_token_id, 0);
  EXPECT_THAT(EncodeChat(*tokenizer_, config_, {{ChatRole::kUser, "What is MLA?"}}),
              ElementsAre(0, 2, 58, 75, 546, 224, 76, 86, 224, 48, 47, 36, 34, 3));
}

TEST_F(ChatTemplateTest, EncodesAConversationAsItsRenderedText) {
  const std::vector<ChatMessage> messages = {
      {ChatRole::kSystem, "You are terse."},
      {ChatRole::kUser, "What is MLA?"},
      {ChatRole::kAssistant, "Multi-head latent attention."},
      {ChatRole::kUser, "Why?"},
  };
  const std::vector<int32_t> ids = EncodeChat(*tokenizer_, config_, messages);
  EXPECT_EQ(ids, tokenizer_->Encode("<｜begin▁of▁sentence｜>You are terse.<｜User｜>What is MLA?<｜Assistant｜>"
                                    "Multi-head latent attention.<｜end▁of▁sentence｜><｜User｜>Why?<｜Assistant｜>"));
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 0);
  EXPECT_EQ(ids.back(), 3);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 1) << "one end of sentence, after the assistant turn";
}

TEST_F(ChatTemplateTest, NoBosTokenWhenTheConfigHasNone) {
  config_.bos_token_id = -1;
  EXPECT_EQ(EncodeChat(*tokenizer_, config_, {{ChatRole::kUser, "Hi"}}),
            tokenizer_->Encode("<｜User｜>Hi<｜Assistant｜>"));
}

}  // namespace
}  // namespace mlaserve
