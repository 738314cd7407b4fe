#include "common/model_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace mlaserve {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("config field \"", field, "\": ", message));
}

absl::Status WrongType(absl::string_view field, absl::string_view expected, const Json& value) {
  return FieldError(field, absl::StrCat("expected ", expected, ", got ", value.type_name()));
}

// Typed access to one JSON object. Absent and null fields leave the output
// untouched, so callers preset the architecture's default; a field of the
// wrong type is an error naming it (with `prefix_` for nested objects).
class Reader {
 public:
  Reader(const Json& object, std::string prefix) : object_(object), prefix_(std::move(prefix)) {}

  const Json* Find(const char* key) const {
    auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }
  std::string Label(const char* key) const { return prefix_ + key; }

  absl::Status Int(const char* key, int64_t* out) const {
    const Json* value = Find(key);
    if (value == nullptr) return absl::OkStatus();
    return ToInt(*value, Label(key), out);
  }
  absl::Status Double(const char* key, double* out) const {
    const Json* value = Find(key);
    if (value == nullptr) return absl::OkStatus();
    if (!value->is_number()) return WrongType(Label(key), "a number", *value);
    *out = value->get<double>();
    return absl::OkStatus();
  }
  absl::Status Bool(const char* key, bool* out) const {
    const Json* value = Find(key);
    if (value == nullptr) return absl::OkStatus();
    if (!value->is_boolean()) return WrongType(Label(key), "a boolean", *value);
    *out = value->get<bool>();
    return absl::OkStatus();
  }
  absl::Status String(const char* key, std::string* out) const {
    const Json* value = Find(key);
    if (value == nullptr) return absl::OkStatus();
    if (!value->is_string()) return WrongType(Label(key), "a string", *value);
    *out = value->get<std::string>();
    return absl::OkStatus();
  }
  // A required dimension: present and positive.
  absl::Status PositiveInt(const char* key, int64_t* out) const {
    if (Find(key) == nullptr) return FieldError(Label(key), "missing");
    RETURN_IF_ERROR(Int(key, out));
    if (*out <= 0) return FieldError(Label(key), absl::StrCat("must be positive, got ", *out));
    return absl::OkStatus();
  }

  // Integers written as 4096.0 are accepted; 1.5, booleans and strings are not.
  static absl::Status ToInt(const Json& value, const std::string& label, int64_t* out) {
    if (value.is_number_unsigned()) {
      if (value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return FieldError(label, "integer out of range");
      }
      *out = static_cast<int64_t>(value.get<uint64_t>());
      return absl::OkStatus();
    }
    if (value.is_number_integer()) {
      *out = value.get<int64_t>();
      return absl::OkStatus();
    }
    if (value.is_number_float()) {
      const double d = value.get<double>();
      if (std::isfinite(d) && d == std::trunc(d) && std::fabs(d) < 0x1p62) {
        *out = static_cast<int64_t>(d);
        return absl::OkStatus();
      }
    }
    return WrongType(label, "an integer", value);
  }

 private:
  const Json& object_;
  std::string prefix_;
};

bool IsV2(const ModelConfig& c) { return c.model_type == "deepseek_v2"; }

absl::Status ParseDimensions(const Reader& r, ModelConfig& c) {
  RETURN_IF_ERROR(r.PositiveInt("vocab_size", &c.vocab_size));
  RETURN_IF_ERROR(r.PositiveInt("hidden_size", &c.hidden_size));
  RETURN_IF_ERROR(r.PositiveInt("intermediate_size", &c.intermediate_size));
  RETURN_IF_ERROR(r.PositiveInt("num_hidden_layers", &c.num_hidden_layers));
  RETURN_IF_ERROR(r.PositiveInt("num_attention_heads", &c.num_attention_heads));
  RETURN_IF_ERROR(r.PositiveInt("kv_lora_rank", &c.kv_lora_rank));
  RETURN_IF_ERROR(r.PositiveInt("qk_nope_head_dim", &c.qk_nope_head_dim));
  RETURN_IF_ERROR(r.PositiveInt("qk_rope_head_dim", &c.qk_rope_head_dim));
  RETURN_IF_ERROR(r.PositiveInt("v_head_dim", &c.v_head_dim));
  RETURN_IF_ERROR(r.Int("q_lora_rank", &c.q_lora_rank));
  if (c.q_lora_rank < 0) return FieldError("q_lora_rank", "must not be negative");
  // Transformers' defaults for configs that omit it.
  c.max_position_embeddings = IsV2(c) ? 2048 : 4096;
  RETURN_IF_ERROR(r.Int("max_position_embeddings", &c.max_position_embeddings));
  if (c.max_position_embeddings <= 0) return FieldError("max_position_embeddings", "must be positive");
  RETURN_IF_ERROR(r.Double("rms_norm_eps", &c.rms_norm_eps));
  if (!(c.rms_norm_eps > 0)) return FieldError("rms_norm_eps", "must be positive");
  return absl::OkStatus();
}

absl::Status ParseYarn(const Reader& p, RopeConfig& rope, int64_t max_position_embeddings) {
  rope.type = RopeType::kYarn;
  if (p.Find("factor") == nullptr) return FieldError(p.Label("factor"), "missing for yarn");
  RETURN_IF_ERROR(p.Double("factor", &rope.factor));
  if (!(rope.factor >= 1.0)) return FieldError(p.Label("factor"), "must be at least 1");
  // Transformers falls back to the model's own context length.
  rope.original_max_position_embeddings = max_position_embeddings;
  RETURN_IF_ERROR(p.Int("original_max_position_embeddings", &rope.original_max_position_embeddings));
  if (rope.original_max_position_embeddings <= 0) {
    return FieldError(p.Label("original_max_position_embeddings"), "must be positive");
  }
  RETURN_IF_ERROR(p.Double("beta_fast", &rope.beta_fast));
  RETURN_IF_ERROR(p.Double("beta_slow", &rope.beta_slow));
  RETURN_IF_ERROR(p.Double("mscale", &rope.mscale));
  RETURN_IF_ERROR(p.Double("mscale_all_dim", &rope.mscale_all_dim));
  RETURN_IF_ERROR(p.Bool("truncate", &rope.truncate));
  return absl::OkStatus();
}

// Transformers 5 writes `rope_parameters` (with rope_theta inside); older
// files have `rope_scaling` beside a top-level `rope_theta`.
absl::Status ParseRope(const Reader& r, ModelConfig& c) {
  RETURN_IF_ERROR(r.Double("rope_theta", &c.rope.theta));
  RETURN_IF_ERROR(r.Bool("rope_interleave", &c.rope_interleave));
  const char* key = r.Find("rope_parameters") != nullptr ? "rope_parameters" : "rope_scaling";
  const Json* params = r.Find(key);
  if (params != nullptr) {
    if (!params->is_object()) return WrongType(key, "an object", *params);
    const Reader p(*params, absl::StrCat(key, "."));
    RETURN_IF_ERROR(p.Double("rope_theta", &c.rope.theta));
    std::string type = "default";
    RETURN_IF_ERROR(p.String("type", &type));
    RETURN_IF_ERROR(p.String("rope_type", &type));  // the newer spelling wins, as in transformers
    if (type == "yarn") {
      RETURN_IF_ERROR(ParseYarn(p, c.rope, c.max_position_embeddings));
    } else if (type != "default") {
      return absl::InvalidArgumentError(absl::StrCat("rope type ", type, " not supported"));
    }
  }
  if (!(c.rope.theta > 0)) return FieldError("rope_theta", "must be positive");
  return absl::OkStatus();
}

absl::Status ParseTopkMethod(const Reader& r, ModelConfig& c) {
  std::string method = IsV2(c) ? "greedy" : "noaux_tc";
  RETURN_IF_ERROR(r.String("topk_method", &method));
  if (method == "greedy") {
    c.topk_method = TopkMethod::kGreedy;
  } else if (method == "group_limited_greedy") {
    c.topk_method = TopkMethod::kGroupLimitedGreedy;
  } else if (method == "noaux_tc") {
    c.topk_method = TopkMethod::kNoauxTc;
  } else {
    return FieldError("topk_method", absl::StrCat("\"", method, "\" not supported"));
  }
  return absl::OkStatus();
}

absl::Status ParseScoringFunc(const Reader& r, ModelConfig& c) {
  std::string func = IsV2(c) ? "softmax" : "sigmoid";
  RETURN_IF_ERROR(r.String("scoring_func", &func));
  if (func == "softmax") {
    c.scoring_func = ScoringFunc::kSoftmax;
  } else if (func == "sigmoid") {
    c.scoring_func = ScoringFunc::kSigmoid;
  } else {
    return FieldError("scoring_func", absl::StrCat("\"", func, "\" not supported"));
  }
  return absl::OkStatus();
}

absl::Status ParseMoe(const Reader& r, ModelConfig& c) {
  RETURN_IF_ERROR(r.Int("n_routed_experts", &c.n_routed_experts));
  RETURN_IF_ERROR(r.Int("num_experts_per_tok", &c.num_experts_per_tok));
  RETURN_IF_ERROR(r.Int("n_shared_experts", &c.n_shared_experts));
  RETURN_IF_ERROR(r.Int("moe_intermediate_size", &c.moe_intermediate_size));
  RETURN_IF_ERROR(r.Int("n_group", &c.n_group));
  RETURN_IF_ERROR(r.Int("topk_group", &c.topk_group));
  RETURN_IF_ERROR(ParseTopkMethod(r, c));
  RETURN_IF_ERROR(ParseScoringFunc(r, c));
  c.norm_topk_prob = !IsV2(c);
  RETURN_IF_ERROR(r.Bool("norm_topk_prob", &c.norm_topk_prob));
  RETURN_IF_ERROR(r.Double("routed_scaling_factor", &c.routed_scaling_factor));
  RETURN_IF_ERROR(r.Int("first_k_dense_replace", &c.first_k_dense_replace));
  RETURN_IF_ERROR(r.Int("moe_layer_freq", &c.moe_layer_freq));
  return absl::OkStatus();
}

// The routing constraints the router kernels rely on.
absl::Status ValidateMoe(const ModelConfig& c) {
  if (c.n_routed_experts < 0) return FieldError("n_routed_experts", "must not be negative");
  if (c.n_shared_experts < 0) return FieldError("n_shared_experts", "must not be negative");
  if (c.first_k_dense_replace < 0) return FieldError("first_k_dense_replace", "must not be negative");
  if (c.moe_layer_freq <= 0) return FieldError("moe_layer_freq", "must be positive");
  if (c.n_routed_experts == 0) return absl::OkStatus();
  if (c.moe_intermediate_size <= 0) return FieldError("moe_intermediate_size", "must be positive for MoE");
  if (c.num_experts_per_tok <= 0 || c.num_experts_per_tok > c.n_routed_experts) {
    return FieldError("num_experts_per_tok", absl::StrCat(c.num_experts_per_tok, " not in [1, n_routed_experts=",
                                                          c.n_routed_experts, "]"));
  }
  if (c.n_group <= 0 || c.n_routed_experts % c.n_group != 0) {
    return FieldError("n_group", absl::StrCat(c.n_group, " does not divide n_routed_experts=", c.n_routed_experts));
  }
  if (c.topk_group <= 0 || c.topk_group > c.n_group) {
    return FieldError("topk_group", absl::StrCat(c.topk_group, " not in [1, n_group=", c.n_group, "]"));
  }
  if (!(c.routed_scaling_factor > 0)) return FieldError("routed_scaling_factor", "must be positive");
  const int64_t per_group = c.n_routed_experts / c.n_group;
  if (c.topk_method != TopkMethod::kGreedy && c.topk_group * per_group < c.num_experts_per_tok) {
    return FieldError("topk_group", absl::StrCat(c.topk_group, " groups of ", per_group,
                                                 " experts cannot supply num_experts_per_tok=", c.num_experts_per_tok));
  }
  // noaux_tc scores each group by the sum of its two best experts.
  if (c.topk_method == TopkMethod::kNoauxTc && per_group < 2) {
    return FieldError("n_group", "noaux_tc needs at least 2 experts per group");
  }
  return absl::OkStatus();
}

absl::Status ParseTokenIds(const Reader& r, ModelConfig& c) {
  RETURN_IF_ERROR(r.Int("bos_token_id", &c.bos_token_id));
  const Json* eos = r.Find("eos_token_id");
  if (eos == nullptr) return absl::OkStatus();
  if (!eos->is_array()) {
    int64_t id;
    RETURN_IF_ERROR(Reader::ToInt(*eos, "eos_token_id", &id));
    c.eos_token_ids = {id};
    return absl::OkStatus();
  }
  for (const Json& item : *eos) {
    int64_t id;
    RETURN_IF_ERROR(Reader::ToInt(item, "eos_token_id", &id));
    c.eos_token_ids.push_back(id);
  }
  return absl::OkStatus();
}

// Features of the wider HF family that this server does not implement.
absl::Status CheckUnsupported(const Reader& r) {
  std::string act = "silu";
  RETURN_IF_ERROR(r.String("hidden_act", &act));
  if (act != "silu") return FieldError("hidden_act", absl::StrCat("\"", act, "\" not supported (only silu)"));
  bool attention_bias = false;
  RETURN_IF_ERROR(r.Bool("attention_bias", &attention_bias));
  if (attention_bias) return FieldError("attention_bias", "attention_bias not supported");
  return absl::OkStatus();
}

absl::Status ParseQuantization(const Reader& r, ModelConfig& c) {
  const Json* qc = r.Find("quantization_config");
  if (qc == nullptr) return absl::OkStatus();
  if (!qc->is_object()) return WrongType("quantization_config", "an object", *qc);
  const Reader q(*qc, "quantization_config.");
  std::string method;
  RETURN_IF_ERROR(q.String("quant_method", &method));
  if (method != "fp8") {
    return FieldError("quantization_config.quant_method", absl::StrCat("\"", method, "\" not supported (only fp8)"));
  }
  std::string fmt = "e4m3";
  RETURN_IF_ERROR(q.String("fmt", &fmt));
  if (fmt != "e4m3") return FieldError("quantization_config.fmt", absl::StrCat("\"", fmt, "\" not supported"));
  const Json* block = q.Find("weight_block_size");
  if (block == nullptr) return FieldError("quantization_config.weight_block_size", "missing (only block fp8 is supported)");
  if (!block->is_array() || block->size() != 2) {
    return FieldError("quantization_config.weight_block_size", "expected [rows, cols]");
  }
  RETURN_IF_ERROR(Reader::ToInt((*block)[0], "quantization_config.weight_block_size", &c.fp8_block_rows));
  RETURN_IF_ERROR(Reader::ToInt((*block)[1], "quantization_config.weight_block_size", &c.fp8_block_cols));
  if (c.fp8_block_rows <= 0 || c.fp8_block_cols <= 0) {
    return FieldError("quantization_config.weight_block_size", "must be positive");
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseObject(const Json& root) {
  const Reader r(root, "");
  ModelConfig c;
  if (r.Find("model_type") == nullptr) return FieldError("model_type", "missing");
  RETURN_IF_ERROR(r.String("model_type", &c.model_type));
  if (c.model_type != "deepseek_v2" && c.model_type != "deepseek_v3" && c.model_type != "kimi_k2") {
    return FieldError("model_type", absl::StrCat("\"", c.model_type, "\" not supported"));
  }
  RETURN_IF_ERROR(ParseDimensions(r, c));
  RETURN_IF_ERROR(ParseRope(r, c));
  RETURN_IF_ERROR(ParseMoe(r, c));
  RETURN_IF_ERROR(ValidateMoe(c));
  RETURN_IF_ERROR(CheckUnsupported(r));
  RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  RETURN_IF_ERROR(ParseTokenIds(r, c));
  RETURN_IF_ERROR(ParseQuantization(r, c));
  return c;
}

}  // namespace

bool ModelConfig::is_moe_layer(int64_t layer) const {
  return n_routed_experts > 0 && layer >= first_k_dense_replace && moe_layer_freq > 0 && layer % moe_layer_freq == 0;
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text) {
  try {
    const Json root = Json::parse(json_text, /*cb=*/nullptr, /*allow_exceptions=*/false);
    if (root.is_discarded()) return absl::InvalidArgumentError("config is not valid JSON");
    if (!root.is_object()) return absl::InvalidArgumentError("config is not a JSON object");
    return ParseObject(root);
  } catch (const std::exception& e) {
    // Every access is type-checked first; this is a last line of defence.
    return absl::InvalidArgumentError(absl::StrCat("config: ", e.what()));
  }
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream text;
  text << in.rdbuf();
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text.str());
  if (!config.ok()) return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
  return config;
}

}  // namespace mlaserve
