#include "common/utf8.h"

namespace mlaserve {

size_t Utf8SequenceLength(std::string_view s, size_t pos, size_t* valid_prefix) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  *valid_prefix = 1;
  if (b0 < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;  // no overlong forms
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  size_t i = 1;
  for (; i < need && pos + i < s.size(); ++i) {
    const auto b = static_cast<unsigned char>(s[pos + i]);
    const bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) break;
  }
  *valid_prefix = i;
  return i == need ? need : 0;
}

// Neither Abseil nor RE2 offers this conversion, so it is written out here;
// the exact count of U+FFFD matters because clients compare decoded text.
std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t prefix;
    const size_t n = Utf8SequenceLength(bytes, pos, &prefix);
    if (n > 0) {
      out.append(bytes.substr(pos, n));
      pos += n;
    } else {
      out.append("\xEF\xBF\xBD");
      pos += prefix;
    }
  }
  return out;
}

size_t IncompleteUtf8Tail(std::string_view bytes) {
  for (size_t tail = 1; tail <= 3 && tail <= bytes.size(); ++tail) {
    const size_t pos = bytes.size() - tail;
    const auto lead = static_cast<unsigned char>(bytes[pos]);
    if (lead < 0xC2 || lead > 0xF4) continue;  // not the start of a multi-byte sequence
    size_t prefix;
    if (Utf8SequenceLength(bytes, pos, &prefix) == 0 && prefix == tail) return tail;
  }
  return 0;
}

}  // namespace mlaserve
