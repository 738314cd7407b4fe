#include "tokenizer/normalizer.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "tokenizer/onig_regex.h"
#include "tokenizer/tokenizer_json.h"
#include "nlohmann/json.hpp"

namespace mlaserve::tokenizer_internal {
namespace {

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  std::string Normalize(std::string_view text) const override {
    std::string out(text);
    for (const auto& step : steps_) out = step->Normalize(out);
    return out;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string Normalize(std::string_view text) const override {
    return text.empty() ? std::string() : absl::StrCat(prefix_, Sv(text));
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<OnigRegex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  std::string Normalize(std::string_view text) const override {
    std::string out;
    for (const Segment& s : FindSegments(*pattern_, text, /*invert=*/false)) {
      if (s.is_match) {
        out += content_;
      } else {
        out.append(text.substr(s.begin, s.end - s.begin));
      }
    }
    return out;
  }

 private:
  std::unique_ptr<OnigRegex> pattern_;
  std::string content_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  std::string Normalize(std::string_view text) const override {
    const size_t begin = left_ ? WhitespaceRunEnd(text, 0) : 0;
    const size_t end = right_ ? WhitespaceRunStart(text, text.size()) : text.size();
    return end > begin ? std::string(text.substr(begin, end - begin)) : std::string();
  }

 private:
  bool left_;
  bool right_;
};

}  // namespace

// Unicode normalization forms and case folding need tables we do not carry;
// they are rejected rather than approximated, since a wrong normalizer would
// change ids without any visible error.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const json& config,
                                                            const std::string& path) {
  ASSIGN_OR_RETURN(const std::string type, TypeOf(config, path));
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(auto steps, ParseEach<std::unique_ptr<Normalizer>>(config, "normalizers", path,
                                                                        ParseNormalizer));
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(const std::optional<std::string> prefix,
                     StringMember(config, "prepend", path));
    if (!prefix) return Invalid(path, "missing \"prepend\"");
    return std::make_unique<PrependNormalizer>(*prefix);
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(auto pattern, ParsePattern(config, path));
    ASSIGN_OR_RETURN(const std::optional<std::string> content,
                     StringMember(config, "content", path));
    if (!content) return Invalid(path, "missing \"content\"");
    return std::make_unique<ReplaceNormalizer>(std::move(pattern), *content);
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(const bool left, BoolMember(config, "strip_left", true, path));
    ASSIGN_OR_RETURN(const bool right, BoolMember(config, "strip_right", true, path));
    return std::make_unique<StripNormalizer>(left, right);
  }
  return Invalid(path, absl::StrCat("unsupported normalizer type \"", type,
                                    "\" (supported: Sequence, Prepend, Replace, Strip)"));
}

}  // namespace mlaserve::tokenizer_internal
