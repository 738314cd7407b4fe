// Text prompts become token ids the way the model's Hugging Face tokenizer
// makes them for generation: encoded, with the BOS token first (DeepSeek's
// tokenizers add it), unless the text already starts with it.
#ifndef MLASERVE_TOKENIZER_PROMPT_H_
#define MLASERVE_TOKENIZER_PROMPT_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "common/model_config.h"
#include "tokenizer/tokenizer.h"

namespace mlaserve {

std::vector<int32_t> EncodeTextPrompt(const Tokenizer& tokenizer, const ModelConfig& config, std::string_view text);

}  // namespace mlaserve

#endif  // MLASERVE_TOKENIZER_PROMPT_H_
