// Fuzz target: the fixture's tokenizer (DeepSeek-V3's pre-tokenizer rules)
// encoding arbitrary bytes, and decoding the ids read from the same bytes.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace {

const mlaserve::Tokenizer& FixtureTokenizer() {
  static const auto* tokenizer = [] {
    auto made = mlaserve::Tokenizer::FromFile("tests/testdata/tiny-deepseek-v3/tokenizer.json");
    if (!made.ok()) std::abort();
    return made->release();
  }();
  return *tokenizer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const mlaserve::Tokenizer& tokenizer = FixtureTokenizer();
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = tokenizer.Encode(text);
  tokenizer.Decode(ids);
  std::vector<int32_t> raw;
  for (size_t i = 0; i + 2 <= size; i += 2) raw.push_back(static_cast<int32_t>(data[i] | (data[i + 1] << 8)) - 1024);
  tokenizer.Decode(raw);
  return 0;
}
