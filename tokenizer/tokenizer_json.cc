#include "tokenizer/tokenizer_json.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace mlaserve::tokenizer_internal {

absl::Status Invalid(std::string_view path, std::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", Sv(path), ": ", Sv(message)));
}

const json* Member(const json& object, const std::string& key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<bool> BoolMember(const json& object, const std::string& key, bool default_value,
                                std::string_view path) {
  const json* value = Member(object, key);
  if (value == nullptr) return default_value;
  if (!value->is_boolean()) return Invalid(absl::StrCat(Sv(path), ".", key), "expected a boolean");
  return value->get<bool>();
}

absl::StatusOr<std::optional<std::string>> StringMember(const json& object, const std::string& key,
                                                        std::string_view path) {
  const json* value = Member(object, key);
  if (value == nullptr) return std::optional<std::string>();
  if (!value->is_string()) return Invalid(absl::StrCat(Sv(path), ".", key), "expected a string");
  return std::optional<std::string>(value->get<std::string>());
}

absl::StatusOr<std::string> TypeOf(const json& config, std::string_view path) {
  if (!config.is_object()) return Invalid(path, "expected an object");
  ASSIGN_OR_RETURN(const std::optional<std::string> type, StringMember(config, "type", path));
  if (!type) return Invalid(path, "missing \"type\"");
  return *type;
}

absl::StatusOr<const json*> ArrayMember(const json& object, const std::string& key,
                                        std::string_view path) {
  const json* value = Member(object, key);
  if (value == nullptr || !value->is_array()) {
    return Invalid(absl::StrCat(Sv(path), ".", key), "expected an array");
  }
  return value;
}

absl::StatusOr<std::unique_ptr<OnigRegex>> ParsePattern(const json& object, std::string_view path) {
  const std::string field = absl::StrCat(Sv(path), ".pattern");
  const json* pattern = Member(object, "pattern");
  if (pattern != nullptr) {
    if (const json* regex = Member(*pattern, "Regex"); regex != nullptr && regex->is_string()) {
      absl::StatusOr<std::unique_ptr<OnigRegex>> compiled =
          OnigRegex::Compile(regex->get<std::string>());
      if (!compiled.ok()) {
        return Invalid(absl::StrCat(field, ".Regex"),
                       absl::StrCat("invalid regex: ", compiled.status().message()));
      }
      return compiled;
    }
    if (const json* literal = Member(*pattern, "String");
        literal != nullptr && literal->is_string()) {
      return OnigRegex::Literal(literal->get<std::string>());
    }
  }
  return Invalid(field, "expected {\"Regex\": ...} or {\"String\": ...}");
}

}  // namespace mlaserve::tokenizer_internal
