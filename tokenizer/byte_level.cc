#include "tokenizer/byte_level.h"

#include <array>
#include <cstdint>

#include "common/utf8.h"

namespace mlaserve::tokenizer_internal {
namespace {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
// others are shifted to U+0100 onwards, so every byte is a visible character
// that BPE can merge (and spaces never appear inside a token).
struct ByteLevelAlphabet {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 324> char_to_byte;  // indexed by code point; -1: none
};

const ByteLevelAlphabet& Alphabet() {
  static const ByteLevelAlphabet* const alphabet = [] {
    auto* a = new ByteLevelAlphabet;
    a->char_to_byte.fill(-1);
    int shifted = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t c = printable ? b : 256 + shifted++;
      AppendUtf8(c, &a->byte_to_utf8[b]);
      a->char_to_byte[c] = static_cast<int16_t>(b);
    }
    return a;
  }();
  return *alphabet;
}

}  // namespace

std::string ByteLevelEncode(std::string_view text) {
  std::string out;
  out.reserve(text.size() * 2);
  for (unsigned char b : text) out += Alphabet().byte_to_utf8[b];
  return out;
}

void AppendByteLevelDecoded(std::string_view token, std::string* out) {
  std::string bytes;
  bytes.reserve(token.size());
  for (size_t pos = 0; pos < token.size();) {
    size_t prefix;
    const size_t len = Utf8SequenceLength(token, pos, &prefix);
    const char32_t c = len == 0 ? 0xFFFD : Utf8DecodeAt(token, pos, len);
    if (len == 0 || c >= Alphabet().char_to_byte.size() || Alphabet().char_to_byte[c] < 0) {
      out->append(token);
      return;
    }
    bytes.push_back(static_cast<char>(Alphabet().char_to_byte[c]));
    pos += len;
  }
  out->append(bytes);
}

}  // namespace mlaserve::tokenizer_internal
