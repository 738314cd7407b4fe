#include "tokenizer/prompt.h"

namespace mlaserve {

std::vector<int32_t> EncodeTextPrompt(const Tokenizer& tokenizer, const ModelConfig& config, std::string_view text) {
  std::vector<int32_t> ids = tokenizer.Encode(text);
  const int64_t bos = config.bos_token_id;
  if (bos >= 0 && !text.empty() && (ids.empty() || ids[0] != bos)) ids.insert(ids.begin(), static_cast<int32_t>(bos));
  return ids;
}

}  // namespace mlaserve
