// Incremental detokenization of one request's output with stop strings.
// Token bytes accumulate; text is released only up to a point that cannot
// change: an incomplete trailing UTF-8 character, or a tail that could still
// grow into a stop string, is held back. When a stop string appears, the text
// ends just before it. Released deltas concatenate to the final text.
#ifndef MLASERVE_TOKENIZER_DETOKENIZER_H_
#define MLASERVE_TOKENIZER_DETOKENIZER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace mlaserve {

class Detokenizer {
 public:
  Detokenizer(const Tokenizer& tokenizer, std::vector<std::string> stop_strings);

  // Adds one token; returns the newly releasable text. Sets stopped() when a
  // stop string completes.
  std::string Append(int32_t token_id);
  // Releases whatever is held back (at the end of the request).
  std::string Flush();
  // Where the text ends when a token must not appear in it (EOS, stop ids).
  bool stopped() const { return stopped_; }

 private:
  std::string Release(size_t end);

  const Tokenizer& tokenizer_;
  std::vector<std::string> stop_strings_;
  size_t max_stop_bytes_ = 0;
  std::string bytes_;
  size_t released_ = 0;
  bool stopped_ = false;
};

}  // namespace mlaserve

#endif  // MLASERVE_TOKENIZER_DETOKENIZER_H_
