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

size_t Utf8CharLength(std::string_view s, size_t pos) {
  size_t prefix;
  const size_t n = Utf8SequenceLength(s, pos, &prefix);
  return n == 0 ? 1 : n;
}

size_t Utf8CharStartBefore(std::string_view s, size_t end) {
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) {
    --start;
  }
  return start;
}

char32_t Utf8DecodeAt(std::string_view s, size_t pos, size_t len) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[pos + i]); };
  switch (len) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
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

namespace {

constexpr std::pair<char32_t, char32_t> kWhitespaceRanges[] = {
    {0x09, 0x0D},     {0x20, 0x20},     {0x85, 0x85},     {0xA0, 0xA0},     {0x1680, 0x1680},
    {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000},
};

bool IsWhitespace(char32_t c) {
  for (const auto& [lo, hi] : kWhitespaceRanges) {
    if (c >= lo && c <= hi) return true;
  }
  return false;
}

}  // namespace

std::span<const std::pair<char32_t, char32_t>> UnicodeWhitespaceRanges() {
  return kWhitespaceRanges;
}

size_t WhitespaceRunStart(std::string_view s, size_t end) {
  while (end > 0) {
    const size_t start = Utf8CharStartBefore(s, end);
    size_t prefix;
    const size_t len = Utf8SequenceLength(s, start, &prefix);
    if (len != end - start || !IsWhitespace(Utf8DecodeAt(s, start, len))) break;
    end = start;
  }
  return end;
}

size_t WhitespaceRunEnd(std::string_view s, size_t begin) {
  while (begin < s.size()) {
    size_t prefix;
    const size_t len = Utf8SequenceLength(s, begin, &prefix);
    if (len == 0 || !IsWhitespace(Utf8DecodeAt(s, begin, len))) break;
    begin += len;
  }
  return begin;
}

}  // namespace mlaserve
