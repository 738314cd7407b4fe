// UTF-8 helpers the tokenizer and the streaming detokenizer share: walking
// and decoding characters, the lossy conversion `tokenizers` applies (Rust's
// String::from_utf8_lossy), the split point that keeps an incomplete trailing
// character for later, and Unicode White_Space runs. Stateless functions over
// caller-owned bytes.
#ifndef MLASERVE_COMMON_UTF8_H_
#define MLASERVE_COMMON_UTF8_H_

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace mlaserve {

// Length of the well-formed UTF-8 sequence at s[pos] (1 to 4), or 0 if there
// is none; `*valid_prefix` receives how many bytes from `pos` are a prefix of
// some well-formed sequence (at least 1): the "maximal subpart" Unicode
// replaces by one U+FFFD.
size_t Utf8SequenceLength(std::string_view s, size_t pos, size_t* valid_prefix);

// Byte length of the character at s[pos]; an invalid byte counts as one
// character so that malformed input is still walked to the end.
size_t Utf8CharLength(std::string_view s, size_t pos);

// Start of the character just before s[end] (end > 0): up to three
// continuation bytes are stepped over, so on malformed text the result is a
// guess that Utf8SequenceLength must confirm.
size_t Utf8CharStartBefore(std::string_view s, size_t end);

// The code point at s[pos], which must start a well-formed sequence of `len`
// bytes.
char32_t Utf8DecodeAt(std::string_view s, size_t pos, size_t len);

// Appends the UTF-8 encoding of `c` (a Unicode scalar value).
void AppendUtf8(char32_t c, std::string* out);

// Each maximal invalid subpart replaced by U+FFFD.
std::string Utf8Lossy(std::string_view bytes);

// How many trailing bytes of `bytes` (0 to 3) start a well-formed sequence
// that is cut short: text that more bytes may still complete.
size_t IncompleteUtf8Tail(std::string_view bytes);

// The Unicode White_Space property as inclusive code point ranges: what
// Oniguruma's `\s` (UTF-8 mode) and Rust's char::is_whitespace / regex `\s`
// match.
std::span<const std::pair<char32_t, char32_t>> UnicodeWhitespaceRanges();

// Start of the run of White_Space characters that ends at s[end].
size_t WhitespaceRunStart(std::string_view s, size_t end);

// End of the run of White_Space characters that starts at s[begin].
size_t WhitespaceRunEnd(std::string_view s, size_t begin);

}  // namespace mlaserve

#endif  // MLASERVE_COMMON_UTF8_H_
