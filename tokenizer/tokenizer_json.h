// Typed access to the fields of a parsed `tokenizer.json`, shared by the
// parsers of each tokenizer component. Every error names the JSON path of the
// offending field, so a bad file is fixed without reading the parser. The
// functions only borrow the JSON, which the caller owns.
#ifndef MLASERVE_TOKENIZER_TOKENIZER_JSON_H_
#define MLASERVE_TOKENIZER_TOKENIZER_JSON_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "tokenizer/onig_regex.h"
#include "nlohmann/json.hpp"

namespace mlaserve::tokenizer_internal {

using json = nlohmann::json;

// This Abseil build has its own string_view, which std::string_view does not
// convert to implicitly.
inline absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// InvalidArgument "tokenizer.json: <path>: <message>".
absl::Status Invalid(std::string_view path, std::string_view message);

// The member `key` of `object`; nullptr when absent or null.
const json* Member(const json& object, const std::string& key);

absl::StatusOr<bool> BoolMember(const json& object, const std::string& key, bool default_value,
                                std::string_view path);
absl::StatusOr<std::optional<std::string>> StringMember(const json& object, const std::string& key,
                                                        std::string_view path);
absl::StatusOr<const json*> ArrayMember(const json& object, const std::string& key,
                                        std::string_view path);

// The "type" of a component's config object.
absl::StatusOr<std::string> TypeOf(const json& config, std::string_view path);

// Each element of the array `object[key]` parsed by
// `parse(element, element_path)`, as the steps of a Sequence component.
template <typename T, typename Parse>
absl::StatusOr<std::vector<T>> ParseEach(const json& object, const std::string& key,
                                         const std::string& path, Parse parse) {
  ASSIGN_OR_RETURN(const json* list, ArrayMember(object, key, path));
  std::vector<T> parsed;
  for (size_t i = 0; i < list->size(); ++i) {
    ASSIGN_OR_RETURN(T element, parse((*list)[i], absl::StrCat(path, ".", key, "[", i, "]")));
    parsed.push_back(std::move(element));
  }
  return parsed;
}

// A Split/Replace pattern: {"Regex": "..."} or {"String": "..."}.
absl::StatusOr<std::unique_ptr<OnigRegex>> ParsePattern(const json& object, std::string_view path);

}  // namespace mlaserve::tokenizer_internal

#endif  // MLASERVE_TOKENIZER_TOKENIZER_JSON_H_
