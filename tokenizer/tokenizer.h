// A Hugging Face `tokenizer.json` tokenizer: byte-level BPE with the
// pre-tokenizers DeepSeek models use (Sequence, Split with RE2 regexes and every
// split behaviour, ByteLevel, Digits), added and special tokens, and the
// ByteLevel decoder. It reproduces the `tokenizers` library's ids exactly.
#ifndef MLASERVE_TOKENIZER_TOKENIZER_H_
#define MLASERVE_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace mlaserve {

class Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json_text);
  ~Tokenizer();

  // Added tokens in `text` (special ones included) map to their ids.
  std::vector<int32_t> Encode(std::string_view text) const;
  // The raw bytes the ids stand for (may end inside a UTF-8 sequence): what a
  // streaming detokenizer accumulates. Unknown ids decode to nothing.
  std::string DecodeBytes(absl::Span<const int32_t> ids, bool skip_special = false) const;
  // DecodeBytes with invalid UTF-8 replaced by U+FFFD, as `tokenizers` decodes.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special = false) const;

  int64_t vocab_size() const;  // one past the largest id, added tokens included
  std::optional<int32_t> TokenToId(std::string_view token) const;
  bool IsSpecial(int32_t id) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mlaserve

#endif  // MLASERVE_TOKENIZER_TOKENIZER_H_
