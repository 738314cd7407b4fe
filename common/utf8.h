// UTF-8 helpers the tokenizer and the streaming detokenizer share: the
// lossy conversion `tokenizers` applies (Rust's String::from_utf8_lossy) and
// the split point that keeps an incomplete trailing character for later.
#ifndef MLASERVE_COMMON_UTF8_H_
#define MLASERVE_COMMON_UTF8_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace mlaserve {

// Length of the well-formed UTF-8 sequence at s[pos] (1 to 4), or 0 if there
// is none; `*valid_prefix` receives how many bytes from `pos` are a prefix of
// some well-formed sequence (at least 1): the "maximal subpart" Unicode
// replaces by one U+FFFD.
size_t Utf8SequenceLength(std::string_view s, size_t pos, size_t* valid_prefix);

// Each maximal invalid subpart replaced by U+FFFD.
std::string Utf8Lossy(std::string_view bytes);

// How many trailing bytes of `bytes` (0 to 3) start a well-formed sequence
// that is cut short: text that more bytes may still complete.
size_t IncompleteUtf8Tail(std::string_view bytes);

}  // namespace mlaserve

#endif  // MLASERVE_COMMON_UTF8_H_
