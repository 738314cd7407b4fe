// Normalizers of a `tokenizer.json` (Sequence, Prepend, Replace, Strip): the
// text rewrites `tokenizers` applies before pre-tokenization, and to added
// tokens marked normalized. A parsed normalizer owns its sub-steps and
// patterns and is immutable, so it may be shared between threads.
#ifndef MLASERVE_TOKENIZER_NORMALIZER_H_
#define MLASERVE_TOKENIZER_NORMALIZER_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace mlaserve::tokenizer_internal {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string Normalize(std::string_view text) const = 0;
};

// The normalizer `config` describes; `path` names it in errors.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const nlohmann::json& config,
                                                            const std::string& path);

}  // namespace mlaserve::tokenizer_internal

#endif  // MLASERVE_TOKENIZER_NORMALIZER_H_
