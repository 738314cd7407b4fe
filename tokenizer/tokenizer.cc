// Hugging Face `tokenizer.json` tokenizer. The behaviour follows the Rust
// `tokenizers` library step by step (added tokens, normalizer, pre-tokenizer,
// BPE model, decoder), because the serving stack must produce the very ids the
// model was trained on: any deviation silently degrades the model. This file
// reads the JSON, finds added tokens and runs the pipeline; each component
// lives in its own file (normalizer, pre_tokenizer, bpe_model, byte_level).
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer_json.h"
#include "nlohmann/json.hpp"
#include "re2/re2.h"

namespace mlaserve {
namespace {

using tokenizer_internal::AppendByteLevelDecoded;
using tokenizer_internal::ArrayMember;
using tokenizer_internal::BoolMember;
using tokenizer_internal::BpeModel;
using tokenizer_internal::Invalid;
using tokenizer_internal::json;
using tokenizer_internal::Member;
using tokenizer_internal::Normalizer;
using tokenizer_internal::ParseNormalizer;
using tokenizer_internal::ParsePreTokenizer;
using tokenizer_internal::PreTokenizer;
using tokenizer_internal::StringMember;
using tokenizer_internal::Sv;
using tokenizer_internal::TypeOf;

// ---------------------------------------------------------------------------
// Added tokens
// ---------------------------------------------------------------------------

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
};

// Either an added token (id >= 0) or text still to be tokenized.
struct Piece {
  std::string text;
  int32_t id = -1;
};

bool IsWordChar(std::string_view s, size_t pos, size_t len) {
  // Rust regex's Unicode \w, which tokenizers uses for single_word.
  static const RE2* const kWord = new RE2("[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]");
  return RE2::FullMatch(re2::StringPiece(s.data() + pos, len), *kWord);
}

// Finds added tokens like tokenizers' AddedVocabulary: leftmost-longest
// (Aho-Corasick) matching, then the single_word / lstrip / rstrip rules.
class AddedTokenSplitter {
 public:
  void Add(const AddedToken* token, std::string pattern) {
    if (pattern.empty()) return;
    // Longest first, so the first hit is the leftmost-longest match.
    auto& bucket = by_first_byte_[static_cast<unsigned char>(pattern[0])];
    const auto at = std::find_if(bucket.begin(), bucket.end(),
                                 [&](const Entry& e) { return e.pattern.size() < pattern.size(); });
    bucket.insert(at, {token, std::move(pattern)});
  }

  // Appends `text` cut into added tokens and the (non-empty) text between them.
  void Split(std::string_view text, std::vector<Piece>* out) const {
    size_t start_offset = 0;
    for (size_t pos = 0; pos < text.size();) {
      const Entry* hit = LongestAt(text, pos);
      if (hit == nullptr) {
        ++pos;
        continue;
      }
      size_t start = pos;
      size_t stop = pos + hit->pattern.size();
      pos = stop;  // matching resumes after a match even when it is rejected
      const AddedToken& token = *hit->token;
      if (token.single_word && !IsSingleWord(text, start, stop)) continue;
      if (token.lstrip) start = WhitespaceRunStart(text, start);
      if (token.rstrip) stop = WhitespaceRunEnd(text, stop);
      start = std::max(start, start_offset);  // earlier matches keep their spaces
      AppendText(text.substr(start_offset, start - start_offset), out);
      out->push_back({std::string(text.substr(start, stop - start)), token.id});
      start_offset = stop;
    }
    AppendText(text.substr(std::min(start_offset, text.size())), out);
  }

 private:
  struct Entry {
    const AddedToken* token;
    std::string pattern;
  };

  const Entry* LongestAt(std::string_view text, size_t pos) const {
    for (const Entry& e : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      if (text.substr(pos, e.pattern.size()) == e.pattern) return &e;
    }
    return nullptr;
  }

  static bool IsSingleWord(std::string_view text, size_t start, size_t stop) {
    if (start > 0) {
      const size_t begin = Utf8CharStartBefore(text, start);
      if (IsWordChar(text, begin, start - begin)) return false;
    }
    return stop == text.size() || !IsWordChar(text, stop, Utf8CharLength(text, stop));
  }

  static void AppendText(std::string_view text, std::vector<Piece>* out) {
    if (!text.empty()) out->push_back({std::string(text), -1});
  }

  std::array<std::vector<Entry>, 256> by_first_byte_;
};

absl::StatusOr<AddedToken> ParseAddedToken(const json& entry, std::string_view path) {
  if (!entry.is_object()) return Invalid(path, "expected an object");
  AddedToken token;
  const json* id = Member(entry, "id");
  if (id == nullptr || !id->is_number_integer() || id->get<int64_t>() < 0 ||
      id->get<int64_t>() > std::numeric_limits<int32_t>::max()) {
    return Invalid(absl::StrCat(Sv(path), ".id"), "expected a non-negative integer");
  }
  token.id = static_cast<int32_t>(id->get<int64_t>());
  ASSIGN_OR_RETURN(const std::optional<std::string> content, StringMember(entry, "content", path));
  if (!content) return Invalid(absl::StrCat(Sv(path), ".content"), "expected a string");
  token.content = *content;
  ASSIGN_OR_RETURN(token.special, BoolMember(entry, "special", false, path));
  ASSIGN_OR_RETURN(token.single_word, BoolMember(entry, "single_word", false, path));
  ASSIGN_OR_RETURN(token.lstrip, BoolMember(entry, "lstrip", false, path));
  ASSIGN_OR_RETURN(token.rstrip, BoolMember(entry, "rstrip", false, path));
  ASSIGN_OR_RETURN(token.normalized, BoolMember(entry, "normalized", !token.special, path));
  return token;
}

// ---------------------------------------------------------------------------
// Post-processor and decoder
// ---------------------------------------------------------------------------

// Post-processors only add special tokens around a sequence (and fix
// offsets); Encode is defined as encoding without them, so the known ones are
// accepted and have no effect.
absl::Status CheckPostProcessor(const json& config, const std::string& path) {
  ASSIGN_OR_RETURN(const std::string type, TypeOf(config, path));
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list, ArrayMember(config, "processors", path));
    for (size_t i = 0; i < list->size(); ++i) {
      RETURN_IF_ERROR(CheckPostProcessor((*list)[i], absl::StrCat(path, ".processors[", i, "]")));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel" || type == "TemplateProcessing" || type == "BertProcessing" ||
      type == "RobertaProcessing") {
    return absl::OkStatus();
  }
  return Invalid(path, absl::StrCat("unsupported post-processor type \"", type, "\""));
}

enum class DecoderKind {
  kJoinWithSpaces,  // no decoder: tokenizers joins the tokens with " "
  kConcatenate,     // Fuse, or an empty Sequence
  kByteLevel,       // bytes of each token (or its own text, see above)
  kFusedByteLevel,  // Fuse then ByteLevel: the joined text is one token
};

absl::StatusOr<DecoderKind> ParseDecoderSequence(const json& config, const std::string& path) {
  ASSIGN_OR_RETURN(const json* list, ArrayMember(config, "decoders", path));
  DecoderKind kind = DecoderKind::kConcatenate;
  bool fused = false;
  for (size_t i = 0; i < list->size(); ++i) {
    const std::string step_path = absl::StrCat(path, ".decoders[", i, "]");
    ASSIGN_OR_RETURN(const std::string type, TypeOf((*list)[i], step_path));
    if (type == "Fuse") {
      fused = fused || kind == DecoderKind::kConcatenate;  // after ByteLevel it changes nothing
    } else if (type == "ByteLevel" && kind == DecoderKind::kConcatenate) {
      kind = fused ? DecoderKind::kFusedByteLevel : DecoderKind::kByteLevel;
    } else {
      return Invalid(step_path, absl::StrCat("unsupported decoder \"", type,
                                             "\" in a Sequence (supported: one ByteLevel, Fuse)"));
    }
  }
  return kind;
}

absl::StatusOr<DecoderKind> ParseDecoder(const json& config, const std::string& path) {
  ASSIGN_OR_RETURN(const std::string type, TypeOf(config, path));
  if (type == "ByteLevel") return DecoderKind::kByteLevel;
  if (type == "Fuse") return DecoderKind::kConcatenate;
  if (type == "Sequence") return ParseDecoderSequence(config, path);
  return Invalid(path, absl::StrCat("unsupported decoder type \"", type,
                                    "\" (supported: ByteLevel, Fuse, Sequence)"));
}

}  // namespace

// ---------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<Normalizer> normalizer;       // null: none
  std::unique_ptr<PreTokenizer> pre_tokenizer;  // null: none
  DecoderKind decoder = DecoderKind::kJoinWithSpaces;
  std::vector<std::unique_ptr<AddedToken>> added_tokens;
  absl::flat_hash_map<std::string, int32_t> added_ids;
  absl::flat_hash_map<int32_t, const AddedToken*> added_by_id;
  absl::flat_hash_set<std::string> special_contents;
  // Tokens with normalized=false match the raw input; the others match the
  // normalized text, as in tokenizers' AddedVocabulary.
  AddedTokenSplitter raw_splitter;
  AddedTokenSplitter normalized_splitter;
  int64_t vocab_size = 0;

  absl::Status AddTokens(const json& list);
  void EncodeText(std::string_view text, std::vector<int32_t>* ids) const;
  const std::string* IdToToken(int32_t id) const;
};

absl::Status Tokenizer::Impl::AddTokens(const json& list) {
  for (size_t i = 0; i < list.size(); ++i) {
    ASSIGN_OR_RETURN(AddedToken token,
                     ParseAddedToken(list[i], absl::StrCat("added_tokens[", i, "]")));
    if (token.content.empty() || added_ids.contains(token.content)) continue;
    // Like tokenizers, a token already in the vocabulary keeps the model's id.
    token.id = model->TokenToId(token.content).value_or(token.id);
    const AddedToken* added = added_tokens.emplace_back(std::make_unique<AddedToken>(token)).get();
    added_ids[added->content] = added->id;
    added_by_id.try_emplace(added->id, added);
    if (added->special) special_contents.insert(added->content);
    vocab_size = std::max<int64_t>(vocab_size, int64_t{added->id} + 1);
  }
  for (const auto& token : added_tokens) {
    if (token->normalized) {
      normalized_splitter.Add(token.get(),
                              normalizer ? normalizer->Normalize(token->content) : token->content);
    } else {
      raw_splitter.Add(token.get(), token->content);
    }
  }
  return absl::OkStatus();
}

// Pre-tokenizes and runs the model on text free of added tokens.
void Tokenizer::Impl::EncodeText(std::string_view text, std::vector<int32_t>* ids) const {
  std::vector<std::string> words = {std::string(text)};
  if (pre_tokenizer != nullptr) pre_tokenizer->PreTokenize(&words);
  for (const std::string& word : words) {
    if (!word.empty()) model->Tokenize(word, ids);
  }
}

const std::string* Tokenizer::Impl::IdToToken(int32_t id) const {
  if (const auto it = added_by_id.find(id); it != added_by_id.end()) return &it->second->content;
  return model->IdToToken(id);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path));
  std::stringstream contents;
  contents << file.rdbuf();
  return FromJson(contents.str());
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json_text) {
  const json root = json::parse(json_text.begin(), json_text.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: not a valid JSON object");
  }
  auto impl = std::make_unique<Impl>();
  const json* model = Member(root, "model");
  if (model == nullptr) return Invalid("model", "missing");
  ASSIGN_OR_RETURN(impl->model, BpeModel::FromJson(*model));
  impl->vocab_size = int64_t{impl->model->max_id()} + 1;

  if (const json* normalizer = Member(root, "normalizer")) {
    ASSIGN_OR_RETURN(impl->normalizer, ParseNormalizer(*normalizer, "normalizer"));
  }
  if (const json* pre_tokenizer = Member(root, "pre_tokenizer")) {
    ASSIGN_OR_RETURN(impl->pre_tokenizer, ParsePreTokenizer(*pre_tokenizer, "pre_tokenizer"));
  }
  if (const json* post_processor = Member(root, "post_processor")) {
    RETURN_IF_ERROR(CheckPostProcessor(*post_processor, "post_processor"));
  }
  if (const json* decoder = Member(root, "decoder")) {
    ASSIGN_OR_RETURN(impl->decoder, ParseDecoder(*decoder, "decoder"));
  }
  if (const json* added = Member(root, "added_tokens")) {
    if (!added->is_array()) return Invalid("added_tokens", "expected an array");
    RETURN_IF_ERROR(impl->AddTokens(*added));
  }
  // truncation and padding are left to the serving layer.
  return absl::WrapUnique(new Tokenizer(std::move(impl)));
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  std::vector<Piece> raw_pieces;
  impl_->raw_splitter.Split(text, &raw_pieces);
  for (const Piece& raw : raw_pieces) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    const std::string normalized =
        impl_->normalizer ? impl_->normalizer->Normalize(raw.text) : raw.text;
    std::vector<Piece> pieces;
    impl_->normalized_splitter.Split(normalized, &pieces);
    for (const Piece& piece : pieces) {
      if (piece.id >= 0) {
        ids.push_back(piece.id);
      } else {
        impl_->EncodeText(piece.text, &ids);
      }
    }
  }
  return ids;
}

std::string Tokenizer::DecodeBytes(absl::Span<const int32_t> ids, bool skip_special) const {
  std::vector<const std::string*> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* token = impl_->IdToToken(id);
    if (token == nullptr) continue;
    // tokenizers tests the token's text, so a vocabulary entry spelled like
    // a special token is skipped as well.
    if (skip_special && impl_->special_contents.contains(*token)) continue;
    tokens.push_back(token);
  }
  std::string out;
  switch (impl_->decoder) {
    case DecoderKind::kByteLevel:
      for (const std::string* token : tokens) AppendByteLevelDecoded(*token, &out);
      break;
    case DecoderKind::kConcatenate:
      for (const std::string* token : tokens) out += *token;
      break;
    case DecoderKind::kFusedByteLevel: {
      std::string joined;
      for (const std::string* token : tokens) joined += *token;
      AppendByteLevelDecoded(joined, &out);
      break;
    }
    case DecoderKind::kJoinWithSpaces:
      out = absl::StrJoin(tokens, " ", [](std::string* o, const std::string* t) { *o += *t; });
      break;
  }
  return out;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special) const {
  return Utf8Lossy(DecodeBytes(ids, skip_special));
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (const auto it = impl_->added_ids.find(Sv(token)); it != impl_->added_ids.end()) {
    return it->second;
  }
  return impl_->model->TokenToId(token);
}

bool Tokenizer::IsSpecial(int32_t id) const {
  const auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && it->second->special;
}

}  // namespace mlaserve
