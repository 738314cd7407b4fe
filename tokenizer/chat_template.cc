#include "tokenizer/chat_template.h"

namespace mlaserve {
namespace {

constexpr char kUserMarker[] = "<｜User｜>";
constexpr char kAssistantMarker[] = "<｜Assistant｜>";
constexpr char kEndOfSentence[] = "<｜end▁of▁sentence｜>";

// The template hoists system messages ahead of every turn, wherever they are.
std::string SystemPrompt(absl::Span<const ChatMessage> messages) {
  std::string prompt;
  bool first = true;
  for (const ChatMessage& message : messages) {
    if (message.role != ChatRole::kSystem) continue;
    if (!first) prompt += "\n\n";
    prompt += message.content;
    first = false;
  }
  return prompt;
}

}  // namespace

std::string RenderChat(absl::Span<const ChatMessage> messages, const std::string& bos_text) {
  std::string text = bos_text + SystemPrompt(messages);
  for (const ChatMessage& message : messages) {
    switch (message.role) {
      case ChatRole::kSystem:
        break;
      case ChatRole::kUser:
        text += kUserMarker + message.content;
        break;
      case ChatRole::kAssistant:
        text += kAssistantMarker + message.content + kEndOfSentence;
        break;
    }
  }
  return text + kAssistantMarker;
}

std::vector<int32_t> EncodeChat(const Tokenizer& tokenizer, const ModelConfig& config,
                                absl::Span<const ChatMessage> messages) {
  std::string bos_text;
  if (config.bos_token_id >= 0) bos_text = tokenizer.Decode({static_cast<int32_t>(config.bos_token_id)});
  return tokenizer.Encode(RenderChat(messages, bos_text));
}

}  // namespace mlaserve
