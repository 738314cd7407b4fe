#include "common/model_config.h"

#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace mlaserve {
namespace {

using Json = nlohmann::json;

constexpr char kTinyConfig[] = "tests/testdata/tiny-deepseek-v3/config.json";
constexpr char kV2LiteConfig[] = "tests/testdata/configs/deepseek-v2-lite.json";
constexpr char kV3Config[] = "tests/testdata/configs/deepseek-v3.json";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

Json LoadJson(const std::string& path) { return Json::parse(ReadAll(path)); }

absl::StatusOr<ModelConfig> Parse(const Json& json) { return ParseModelConfig(json.dump()); }

// Parsing fails with InvalidArgument and a message containing `needle`.
void ExpectError(const Json& json, const std::string& needle) {
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_FALSE(config.ok()) << json.dump();
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
  EXPECT_NE(config.status().message().find(needle), absl::string_view::npos)
      << "\"" << needle << "\" not in: " << config.status();
}

// Only the fields without defaults.
Json Minimal(const std::string& model_type) {
  return Json{{"model_type", model_type},  {"vocab_size", 100},      {"hidden_size", 64},
              {"intermediate_size", 128},  {"num_hidden_layers", 2}, {"num_attention_heads", 4},
              {"kv_lora_rank", 32},        {"qk_nope_head_dim", 16}, {"qk_rope_head_dim", 8},
              {"v_head_dim", 16}};
}

TEST(ModelConfigTest, TinyFixture) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(kTinyConfig);
  ASSERT_TRUE(config.ok()) << config.status();
  const ModelConfig& c = *config;
  EXPECT_EQ(c.model_type, "deepseek_v3");
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.intermediate_size, 512);
  EXPECT_EQ(c.moe_intermediate_size, 64);
  EXPECT_EQ(c.num_hidden_layers, 3);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.q_lora_rank, 96);
  EXPECT_EQ(c.kv_lora_rank, 64);
  EXPECT_EQ(c.qk_nope_head_dim, 32);
  EXPECT_EQ(c.qk_rope_head_dim, 16);
  EXPECT_EQ(c.v_head_dim, 32);
  EXPECT_EQ(c.qk_head_dim(), 48);
  EXPECT_EQ(c.latent_dim(), 80);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.rope.type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(c.rope.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope.beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.mscale, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.mscale_all_dim, 1.0);
  EXPECT_TRUE(c.rope.truncate);
  EXPECT_TRUE(c.rope_interleave);
  EXPECT_EQ(c.n_routed_experts, 16);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.n_group, 4);
  EXPECT_EQ(c.topk_group, 2);
  EXPECT_EQ(c.topk_method, TopkMethod::kNoauxTc);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSigmoid);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_EQ(c.moe_layer_freq, 1);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{1}));
  EXPECT_EQ(c.fp8_block_rows, 0);
  EXPECT_EQ(c.fp8_block_cols, 0);
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(1));
  EXPECT_TRUE(c.is_moe_layer(2));
}

TEST(ModelConfigTest, DeepSeekV2Lite) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(kV2LiteConfig);
  ASSERT_TRUE(config.ok()) << config.status();
  const ModelConfig& c = *config;
  EXPECT_EQ(c.model_type, "deepseek_v2");
  EXPECT_EQ(c.vocab_size, 102400);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.intermediate_size, 10944);
  EXPECT_EQ(c.moe_intermediate_size, 1408);
  EXPECT_EQ(c.num_hidden_layers, 27);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.q_lora_rank, 0);  // null: a direct q_proj
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 163840);
  EXPECT_EQ(c.rope.type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(c.rope.factor, 40.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rope.mscale, 0.707);
  EXPECT_DOUBLE_EQ(c.rope.mscale_all_dim, 0.707);
  EXPECT_TRUE(c.rope_interleave);
  EXPECT_EQ(c.n_routed_experts, 64);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.n_shared_experts, 2);
  EXPECT_EQ(c.n_group, 1);
  EXPECT_EQ(c.topk_group, 1);
  EXPECT_EQ(c.topk_method, TopkMethod::kGreedy);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSoftmax);  // absent: the V2 default
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 1.0);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2}));
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(26));
}

TEST(ModelConfigTest, DeepSeekV3) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(kV3Config);
  ASSERT_TRUE(config.ok()) << config.status();
  const ModelConfig& c = *config;
  EXPECT_EQ(c.model_type, "deepseek_v3");
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.intermediate_size, 18432);
  EXPECT_EQ(c.moe_intermediate_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.num_attention_heads, 128);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.latent_dim(), 576);
  EXPECT_EQ(c.rope.type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(c.rope.factor, 40.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rope.mscale_all_dim, 1.0);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_EQ(c.topk_method, TopkMethod::kNoauxTc);     // absent: the V3 default
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSigmoid);  // absent: the V3 default
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.first_k_dense_replace, 3);
  EXPECT_FALSE(c.is_moe_layer(2));
  EXPECT_TRUE(c.is_moe_layer(3));
  EXPECT_TRUE(c.is_moe_layer(60));
}

TEST(ModelConfigTest, OlderRopeScalingSpelling) {
  Json json = LoadJson(kV2LiteConfig);
  json.erase("rope_parameters");
  json["rope_theta"] = 10000.0;
  json["rope_scaling"] = {{"type", "yarn"},         {"factor", 40},           {"original_max_position_embeddings", 4096},
                          {"beta_fast", 32},        {"beta_slow", 1},         {"mscale", 0.707},
                          {"mscale_all_dim", 0.707}};
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ModelConfig> reference = LoadModelConfig(kV2LiteConfig);
  ASSERT_TRUE(reference.ok());
  EXPECT_EQ(config->rope.type, RopeType::kYarn);
  EXPECT_EQ(config->rope.theta, reference->rope.theta);
  EXPECT_EQ(config->rope.factor, reference->rope.factor);
  EXPECT_EQ(config->rope.original_max_position_embeddings, reference->rope.original_max_position_embeddings);
  EXPECT_EQ(config->rope.mscale, reference->rope.mscale);
  EXPECT_EQ(config->rope.mscale_all_dim, reference->rope.mscale_all_dim);
}

TEST(ModelConfigTest, RopeThetaPlacement) {
  Json json = Minimal("deepseek_v3");
  json["rope_theta"] = 50000;
  EXPECT_DOUBLE_EQ(Parse(json)->rope.theta, 50000);  // top level, no rope object
  json["rope_scaling"] = nullptr;
  EXPECT_DOUBLE_EQ(Parse(json)->rope.theta, 50000);
  json["rope_parameters"] = {{"rope_type", "default"}};
  EXPECT_DOUBLE_EQ(Parse(json)->rope.theta, 50000);
  json["rope_parameters"]["rope_theta"] = 1e6;  // inside wins
  EXPECT_DOUBLE_EQ(Parse(json)->rope.theta, 1e6);
  EXPECT_EQ(Parse(json)->rope.type, RopeType::kDefault);
  EXPECT_DOUBLE_EQ(Parse(Minimal("deepseek_v3"))->rope.theta, 10000);
}

TEST(ModelConfigTest, RopeDefaultSpellings) {
  for (const Json& rope : {Json{{"rope_type", "default"}}, Json{{"type", "default"}}, Json{{"type", nullptr}},
                           Json::object(), Json{{"rope_type", nullptr}, {"rope_theta", 10000}}}) {
    Json json = Minimal("deepseek_v2");
    json["rope_parameters"] = rope;
    absl::StatusOr<ModelConfig> config = Parse(json);
    ASSERT_TRUE(config.ok()) << rope.dump() << " " << config.status();
    EXPECT_EQ(config->rope.type, RopeType::kDefault);
  }
}

TEST(ModelConfigTest, YarnDefaults) {
  Json json = Minimal("deepseek_v3");
  json["max_position_embeddings"] = 8192;
  json["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 2}};
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->rope.type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(config->rope.factor, 2.0);
  EXPECT_EQ(config->rope.original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(config->rope.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(config->rope.beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(config->rope.mscale, 1.0);
  EXPECT_DOUBLE_EQ(config->rope.mscale_all_dim, 0.0);
  EXPECT_TRUE(config->rope.truncate);
  json["rope_parameters"]["truncate"] = false;
  json["rope_parameters"]["beta_fast"] = 16;
  EXPECT_FALSE(Parse(json)->rope.truncate);
  EXPECT_DOUBLE_EQ(Parse(json)->rope.beta_fast, 16.0);
}

TEST(ModelConfigTest, RopeTypeWinsOverType) {
  Json json = Minimal("deepseek_v3");
  json["rope_parameters"] = {{"type", "linear"}, {"rope_type", "yarn"}, {"factor", 4}};
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->rope.type, RopeType::kYarn);
}

TEST(ModelConfigTest, UnsupportedRopeTypes) {
  for (const char* type : {"linear", "dynamic", "llama3", "longrope", "su"}) {
    Json json = Minimal("deepseek_v3");
    json["rope_parameters"] = {{"rope_type", type}, {"factor", 2.0}};
    ExpectError(json, std::string("rope type ") + type + " not supported");
    json.erase("rope_parameters");
    json["rope_scaling"] = {{"type", type}, {"factor", 2.0}};
    ExpectError(json, std::string("rope type ") + type + " not supported");
  }
}

TEST(ModelConfigTest, YarnNeedsFactor) {
  Json json = Minimal("deepseek_v3");
  json["rope_parameters"] = {{"rope_type", "yarn"}};
  ExpectError(json, "rope_parameters.factor");
  json["rope_parameters"]["factor"] = "4";
  ExpectError(json, "rope_parameters.factor");
  json["rope_parameters"]["factor"] = 0.5;
  ExpectError(json, "rope_parameters.factor");
}

TEST(ModelConfigTest, DefaultsByModelType) {
  for (const char* type : {"deepseek_v2", "deepseek_v3", "kimi_k2"}) {
    SCOPED_TRACE(type);
    const bool v2 = std::string(type) == "deepseek_v2";
    absl::StatusOr<ModelConfig> config = Parse(Minimal(type));
    ASSERT_TRUE(config.ok()) << config.status();
    const ModelConfig& c = *config;
    EXPECT_EQ(c.model_type, type);
    EXPECT_EQ(c.scoring_func, v2 ? ScoringFunc::kSoftmax : ScoringFunc::kSigmoid);
    EXPECT_EQ(c.topk_method, v2 ? TopkMethod::kGreedy : TopkMethod::kNoauxTc);
    EXPECT_EQ(c.norm_topk_prob, !v2);
    EXPECT_EQ(c.q_lora_rank, 0);
    EXPECT_EQ(c.n_routed_experts, 0);
    EXPECT_EQ(c.n_shared_experts, 0);
    EXPECT_EQ(c.n_group, 1);
    EXPECT_EQ(c.topk_group, 1);
    EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 1.0);
    EXPECT_EQ(c.first_k_dense_replace, 0);
    EXPECT_EQ(c.moe_layer_freq, 1);
    EXPECT_TRUE(c.rope_interleave);
    EXPECT_EQ(c.rope.type, RopeType::kDefault);
    EXPECT_EQ(c.bos_token_id, -1);
    EXPECT_TRUE(c.eos_token_ids.empty());
    EXPECT_FALSE(c.is_moe_layer(0));  // no routed experts: dense
    EXPECT_FALSE(c.is_moe_layer(1));
  }
}

TEST(ModelConfigTest, ExplicitValuesOverrideDefaults) {
  Json json = Minimal("deepseek_v2");
  json.update(Json{{"scoring_func", "sigmoid"},
                   {"topk_method", "group_limited_greedy"},
                   {"norm_topk_prob", true},
                   {"rope_interleave", false},
                   {"n_routed_experts", 8},
                   {"num_experts_per_tok", 2},
                   {"moe_intermediate_size", 32},
                   {"n_group", 4},
                   {"topk_group", 2}});
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->scoring_func, ScoringFunc::kSigmoid);
  EXPECT_EQ(config->topk_method, TopkMethod::kGroupLimitedGreedy);
  EXPECT_TRUE(config->norm_topk_prob);
  EXPECT_FALSE(config->rope_interleave);
  json = Minimal("deepseek_v3");
  json["norm_topk_prob"] = false;
  json["topk_method"] = "greedy";
  json["scoring_func"] = "softmax";
  config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->norm_topk_prob);
  EXPECT_EQ(config->topk_method, TopkMethod::kGreedy);
  EXPECT_EQ(config->scoring_func, ScoringFunc::kSoftmax);
}

TEST(ModelConfigTest, NullsTakeDefaults) {
  Json json = Minimal("deepseek_v3");
  json.update(Json{{"q_lora_rank", nullptr},
                   {"n_shared_experts", nullptr},
                   {"n_routed_experts", nullptr},
                   {"n_group", nullptr},
                   {"bos_token_id", nullptr},
                   {"eos_token_id", nullptr},
                   {"quantization_config", nullptr}});
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->q_lora_rank, 0);
  EXPECT_EQ(config->n_shared_experts, 0);
  EXPECT_EQ(config->n_routed_experts, 0);
  EXPECT_EQ(config->n_group, 1);
  EXPECT_EQ(config->bos_token_id, -1);
  EXPECT_TRUE(config->eos_token_ids.empty());
}

TEST(ModelConfigTest, TokenIds) {
  Json json = Minimal("kimi_k2");
  json["bos_token_id"] = 163584;
  json["eos_token_id"] = {163585, 163586};
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->bos_token_id, 163584);
  EXPECT_EQ(config->eos_token_ids, (std::vector<int64_t>{163585, 163586}));
  json["eos_token_id"] = "1";
  ExpectError(json, "eos_token_id");
  json["eos_token_id"] = {1, "2"};
  ExpectError(json, "eos_token_id");
  json["eos_token_id"] = 1;
  json["bos_token_id"] = {0};
  ExpectError(json, "bos_token_id");
}

TEST(ModelConfigTest, UnknownModelType) {
  Json json = Minimal("llama");
  ExpectError(json, "llama");
  json["model_type"] = 3;
  ExpectError(json, "model_type");
  json.erase("model_type");
  ExpectError(json, "model_type");
}

TEST(ModelConfigTest, RequiredDimensions) {
  for (const char* field : {"hidden_size", "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim",
                            "qk_rope_head_dim", "v_head_dim", "vocab_size", "num_hidden_layers", "intermediate_size"}) {
    SCOPED_TRACE(field);
    Json json = Minimal("deepseek_v3");
    json.erase(field);
    ExpectError(json, field);
    json[field] = nullptr;
    ExpectError(json, field);
    json[field] = 0;
    ExpectError(json, field);
    json[field] = -4;
    ExpectError(json, field);
    json[field] = "64";
    ExpectError(json, field);
    json[field] = 64.5;
    ExpectError(json, field);
    json[field] = true;
    ExpectError(json, field);
  }
}

TEST(ModelConfigTest, IntegralFloatsAccepted) {
  Json json = Minimal("deepseek_v3");
  json["hidden_size"] = 64.0;
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hidden_size, 64);
}

TEST(ModelConfigTest, WrongTypesAreErrors) {
  const std::vector<std::pair<Json, std::string>> cases = {
      {{{"norm_topk_prob", 1}}, "norm_topk_prob"},
      {{{"rope_interleave", "true"}}, "rope_interleave"},
      {{{"rope_parameters", "yarn"}}, "rope_parameters"},
      {{{"rope_scaling", {1, 2}}}, "rope_scaling"},
      {{{"rope_theta", "1e4"}}, "rope_theta"},
      {{{"rms_norm_eps", {{"a", 1}}}}, "rms_norm_eps"},
      {{{"routed_scaling_factor", "2.5"}}, "routed_scaling_factor"},
      {{{"hidden_act", 1}}, "hidden_act"},
      {{{"attention_bias", "no"}}, "attention_bias"},
      {{{"tie_word_embeddings", 0}}, "tie_word_embeddings"},
      {{{"scoring_func", false}}, "scoring_func"},
      {{{"topk_method", {"noaux_tc"}}}, "topk_method"},
      {{{"q_lora_rank", "1536"}}, "q_lora_rank"},
      {{{"n_routed_experts", 1e30}}, "n_routed_experts"},
      {{{"n_group", 18446744073709551615ull}}, "n_group"},
      {{{"quantization_config", {1}}}, "quantization_config"},
      {{{"quantization_config", {{"quant_method", 8}}}}, "quant_method"},
  };
  for (const auto& [patch, field] : cases) {
    Json json = Minimal("deepseek_v3");
    json.update(patch);
    ExpectError(json, field);
  }
}

TEST(ModelConfigTest, UnsupportedFeatures) {
  Json json = Minimal("deepseek_v3");
  json["hidden_act"] = "gelu";
  ExpectError(json, "gelu");
  json["hidden_act"] = "silu";
  json["attention_bias"] = true;
  ExpectError(json, "attention_bias not supported");
  json["attention_bias"] = false;
  json["scoring_func"] = "tanh";
  ExpectError(json, "scoring_func");
  json["scoring_func"] = "sigmoid";
  json["topk_method"] = "random";
  ExpectError(json, "topk_method");
  json["topk_method"] = "noaux_tc";
  json["num_key_value_heads"] = 1;  // ignored: MLA has no separate kv heads
  EXPECT_TRUE(Parse(json).ok());
}

Json TinyMoe() {
  Json json = Minimal("deepseek_v3");
  json.update(Json{{"n_routed_experts", 16},
                   {"num_experts_per_tok", 4},
                   {"moe_intermediate_size", 32},
                   {"n_group", 4},
                   {"topk_group", 2}});
  return json;
}

TEST(ModelConfigTest, MoeValidation) {
  ASSERT_TRUE(Parse(TinyMoe()).ok()) << Parse(TinyMoe()).status();
  Json json = TinyMoe();
  json["num_experts_per_tok"] = 17;
  ExpectError(json, "num_experts_per_tok");
  json = TinyMoe();
  json.erase("num_experts_per_tok");
  ExpectError(json, "num_experts_per_tok");
  json = TinyMoe();
  json["n_group"] = 3;
  ExpectError(json, "n_group");
  json["n_group"] = 0;
  ExpectError(json, "n_group");
  json = TinyMoe();
  json["topk_group"] = 5;
  ExpectError(json, "topk_group");
  json = TinyMoe();
  json["topk_group"] = 1;
  json["num_experts_per_tok"] = 8;  // one group of 4 cannot supply 8
  ExpectError(json, "topk_group");
  json = TinyMoe();
  json["n_group"] = 16;
  json["topk_group"] = 4;
  ExpectError(json, "n_group");  // noaux_tc needs two experts per group
  json = TinyMoe();
  json.erase("moe_intermediate_size");
  ExpectError(json, "moe_intermediate_size");
  json = TinyMoe();
  json["moe_layer_freq"] = 0;
  ExpectError(json, "moe_layer_freq");
  json = TinyMoe();
  json["n_routed_experts"] = -16;
  ExpectError(json, "n_routed_experts");
  json = TinyMoe();
  json["n_shared_experts"] = -1;
  ExpectError(json, "n_shared_experts");
  json = TinyMoe();
  json["first_k_dense_replace"] = -1;
  ExpectError(json, "first_k_dense_replace");
}

TEST(ModelConfigTest, MoeLayerFrequency) {
  Json json = TinyMoe();
  json["first_k_dense_replace"] = 1;
  json["moe_layer_freq"] = 2;
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->is_moe_layer(0));
  EXPECT_FALSE(config->is_moe_layer(1));
  EXPECT_TRUE(config->is_moe_layer(2));
  EXPECT_FALSE(config->is_moe_layer(3));
  EXPECT_TRUE(config->is_moe_layer(4));
}

TEST(ModelConfigTest, Fp8Quantization) {
  Json json = LoadJson(kV3Config);
  json["quantization_config"] = {
      {"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"}, {"weight_block_size", {128, 64}}};
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->fp8_block_rows, 128);
  EXPECT_EQ(config->fp8_block_cols, 64);

  json["quantization_config"]["quant_method"] = "awq";
  ExpectError(json, "awq");
  json["quantization_config"]["quant_method"] = "fp8";
  json["quantization_config"]["fmt"] = "e5m2";
  ExpectError(json, "e5m2");
  json["quantization_config"].erase("fmt");
  json["quantization_config"]["weight_block_size"] = {128};
  ExpectError(json, "weight_block_size");
  json["quantization_config"]["weight_block_size"] = {128, 0};
  ExpectError(json, "weight_block_size");
  json["quantization_config"]["weight_block_size"] = {128, "128"};
  ExpectError(json, "weight_block_size");
  json["quantization_config"].erase("weight_block_size");
  ExpectError(json, "weight_block_size");
  json["quantization_config"] = Json::object();
  ExpectError(json, "quant_method");
}

TEST(ModelConfigTest, NotJson) {
  for (const char* text : {"", "{", "[1, 2]", "\"deepseek_v3\"", "null", "{\"model_type\": \"deepseek_v3\",}"}) {
    absl::StatusOr<ModelConfig> config = ParseModelConfig(text);
    EXPECT_FALSE(config.ok()) << text;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
}

TEST(ModelConfigTest, RandomCorruptionNeverCrashes) {
  const std::string original = ReadAll(kTinyConfig);
  std::mt19937 rng(99);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text = original;
    for (int f = 0; f < 3; ++f) text[rng() % text.size()] = static_cast<char>(rng());
    (void)ParseModelConfig(text);  // any result but a crash will do
  }
}

TEST(ModelConfigTest, LoadErrorsNameThePath) {
  absl::StatusOr<ModelConfig> missing = LoadModelConfig("tests/testdata/no-such-config.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no-such-config.json"), absl::string_view::npos);
  // A file that is not a config: the error still says which file.
  absl::StatusOr<ModelConfig> wrong = LoadModelConfig("tests/testdata/tiny-deepseek-v3/generation_config.json");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("generation_config.json"), absl::string_view::npos);
}

}  // namespace
}  // namespace mlaserve
