// DeepSeek-V3's chat template (the Jinja template of its tokenizer_config.json,
// with add_generation_prompt and without tool calls): the BOS text, every
// system message joined by blank lines, then the turns, each behind its
// role's marker, and an open assistant turn. The markers are added tokens of
// the tokenizer, so encoding the rendered text yields their ids.
#ifndef MLASERVE_TOKENIZER_CHAT_TEMPLATE_H_
#define MLASERVE_TOKENIZER_CHAT_TEMPLATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "common/model_config.h"
#include "tokenizer/tokenizer.h"

namespace mlaserve {

enum class ChatRole { kSystem, kUser, kAssistant };

struct ChatMessage {
  ChatRole role = ChatRole::kUser;
  std::string content;
};

// `bos_text` is the BOS token's text ("<｜begin▁of▁sentence｜>").
std::string RenderChat(absl::Span<const ChatMessage> messages, const std::string& bos_text);

// The rendered conversation's ids; the BOS text is the decoding of the
// config's bos_token_id (none when it is negative).
std::vector<int32_t> EncodeChat(const Tokenizer& tokenizer, const ModelConfig& config,
                                absl::Span<const ChatMessage> messages);

}  // namespace mlaserve

#endif  // MLASERVE_TOKENIZER_CHAT_TEMPLATE_H_
