// Pre-tokenizers of a `tokenizer.json` (Sequence, Split, ByteLevel, Digits,
// Whitespace, WhitespaceSplit): they cut normalized text into the words the
// BPE model encodes one by one. A parsed pre-tokenizer owns its sub-steps and
// regexes and is immutable, so it may be shared between threads.
#ifndef MLASERVE_TOKENIZER_PRE_TOKENIZER_H_
#define MLASERVE_TOKENIZER_PRE_TOKENIZER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace mlaserve::tokenizer_internal {

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits every piece further; empty pieces are dropped, as in `tokenizers`.
  virtual void PreTokenize(std::vector<std::string>* pieces) const = 0;
};

// The pre-tokenizer `config` describes; `path` names it in errors.
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const nlohmann::json& config,
                                                                const std::string& path);

}  // namespace mlaserve::tokenizer_internal

#endif  // MLASERVE_TOKENIZER_PRE_TOKENIZER_H_
