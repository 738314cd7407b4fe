#include "tokenizer/detokenizer.h"

#include <algorithm>
#include <string_view>

#include "common/utf8.h"

namespace mlaserve {

Detokenizer::Detokenizer(const Tokenizer& tokenizer, std::vector<std::string> stop_strings)
    : tokenizer_(tokenizer), stop_strings_(std::move(stop_strings)) {
  stop_strings_.erase(std::remove(stop_strings_.begin(), stop_strings_.end(), ""), stop_strings_.end());
  for (const std::string& s : stop_strings_) max_stop_bytes_ = std::max(max_stop_bytes_, s.size());
}

std::string Detokenizer::Release(size_t end) {
  std::string text = Utf8Lossy(std::string_view(bytes_).substr(released_, end - released_));
  released_ = end;
  return text;
}

std::string Detokenizer::Append(int32_t token_id) {
  if (stopped_) return "";
  const size_t old_size = bytes_.size();
  bytes_ += tokenizer_.DecodeBytes({token_id});
  // A stop string can only end in the new bytes; it may start up to
  // max_stop_bytes_ - 1 bytes earlier, but never in released text.
  const size_t search_from = std::max(released_, old_size >= max_stop_bytes_ ? old_size - max_stop_bytes_ + 1 : 0);
  size_t stop_at = std::string::npos;
  for (const std::string& stop : stop_strings_) {
    const size_t pos = bytes_.find(stop, search_from);
    if (pos != std::string::npos) stop_at = std::min(stop_at, pos);
  }
  if (stop_at != std::string::npos) {
    stopped_ = true;
    std::string text = Release(stop_at);
    bytes_.resize(stop_at);
    return text;
  }
  size_t end = bytes_.size() - (max_stop_bytes_ > 0 ? std::min(bytes_.size(), max_stop_bytes_ - 1) : 0);
  end = std::max(end, released_);
  end -= IncompleteUtf8Tail(std::string_view(bytes_).substr(released_, end - released_));
  return Release(end);
}

std::string Detokenizer::Flush() { return Release(bytes_.size()); }

}  // namespace mlaserve
