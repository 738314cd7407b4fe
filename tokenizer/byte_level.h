// GPT-2's byte-level alphabet (bytes_to_unicode), shared by the ByteLevel
// pre-tokenizer, which spells every input byte as a visible character before
// BPE, and the ByteLevel decoder, which turns tokens back into bytes. The
// alphabet is a process-wide constant built on first use; callers own all
// strings passed in and out.
#ifndef MLASERVE_TOKENIZER_BYTE_LEVEL_H_
#define MLASERVE_TOKENIZER_BYTE_LEVEL_H_

#include <string>
#include <string_view>

namespace mlaserve::tokenizer_internal {

// Each byte of `text` replaced by its alphabet character.
std::string ByteLevelEncode(std::string_view text);

// Appends the bytes a token stands for under the ByteLevel decoder: when a
// character falls outside the alphabet (as in most added tokens), `tokenizers`
// keeps the token's own UTF-8 text instead.
void AppendByteLevelDecoded(std::string_view token, std::string* out);

}  // namespace mlaserve::tokenizer_internal

#endif  // MLASERVE_TOKENIZER_BYTE_LEVEL_H_
