#include "worker/random_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace mlaserve {
namespace {

void AddMlp(const std::string& prefix, int64_t hidden, int64_t inner, std::vector<TensorShape>* out) {
  out->push_back({prefix + "gate_proj.weight", {inner, hidden}});
  out->push_back({prefix + "up_proj.weight", {inner, hidden}});
  out->push_back({prefix + "down_proj.weight", {hidden, inner}});
}

void AddAttention(const ModelConfig& c, const std::string& p, std::vector<TensorShape>* out) {
  const int64_t heads = c.num_attention_heads, qk = c.qk_head_dim();
  if (c.q_lora_rank > 0) {
    out->push_back({p + "q_a_proj.weight", {c.q_lora_rank, c.hidden_size}});
    out->push_back({p + "q_a_layernorm.weight", {c.q_lora_rank}});
    out->push_back({p + "q_b_proj.weight", {heads * qk, c.q_lora_rank}});
  } else {
    out->push_back({p + "q_proj.weight", {heads * qk, c.hidden_size}});
  }
  out->push_back({p + "kv_a_proj_with_mqa.weight", {c.latent_dim(), c.hidden_size}});
  out->push_back({p + "kv_a_layernorm.weight", {c.kv_lora_rank}});
  out->push_back({p + "kv_b_proj.weight", {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}});
  out->push_back({p + "o_proj.weight", {c.hidden_size, heads * c.v_head_dim}});
}

// Quantizes a [rows, cols] float matrix to e4m3 with one scale per 128x128
// block (scale = block max / 448, as DeepSeek's fp8 checkpoints store it).
std::pair<TensorToWrite, TensorToWrite> QuantizeFp8(const TensorShape& t, const std::vector<float>& v) {
  const int64_t rows = t.shape[0], cols = t.shape[1], block = 128;
  const int64_t brows = (rows + block - 1) / block, bcols = (cols + block - 1) / block;
  std::vector<float> scales(brows * bcols);
  std::string bytes(rows * cols, '\0');
  for (int64_t br = 0; br < brows; ++br) {
    for (int64_t bc = 0; bc < bcols; ++bc) {
      float amax = 0;
      for (int64_t r = br * block; r < std::min(rows, (br + 1) * block); ++r)
        for (int64_t c = bc * block; c < std::min(cols, (bc + 1) * block); ++c) amax = std::max(amax, std::abs(v[r * cols + c]));
      const float scale = amax > 0 ? amax / 448.0f : 1.0f;
      scales[br * bcols + bc] = scale;
      for (int64_t r = br * block; r < std::min(rows, (br + 1) * block); ++r)
        for (int64_t c = bc * block; c < std::min(cols, (bc + 1) * block); ++c)
          bytes[r * cols + c] = static_cast<char>(F32ToF8E4M3(v[r * cols + c] / scale));
    }
  }
  TensorToWrite weight{t.name, DType::kF8E4M3, t.shape, std::move(bytes)};
  return {std::move(weight), F32Tensor(t.name + "_scale_inv", {brows, bcols}, scales)};
}

TensorToWrite Encode(const TensorShape& t, const std::vector<float>& v, DType dtype) {
  if (dtype == DType::kF32) return F32Tensor(t.name, t.shape, v);
  std::string bytes(v.size() * 2, '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    uint16_t b = F32ToBf16(v[i]);
    std::memcpy(&bytes[2 * i], &b, 2);
  }
  return TensorToWrite{t.name, DType::kBF16, t.shape, std::move(bytes)};
}

}  // namespace

std::vector<TensorShape> CheckpointTensorShapes(const ModelConfig& c) {
  std::vector<TensorShape> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}});
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string p = absl::StrCat("model.layers.", layer, ".");
    out.push_back({p + "input_layernorm.weight", {c.hidden_size}});
    out.push_back({p + "post_attention_layernorm.weight", {c.hidden_size}});
    AddAttention(c, p + "self_attn.", &out);
    if (!c.is_moe_layer(layer)) {
      AddMlp(p + "mlp.", c.hidden_size, c.intermediate_size, &out);
      continue;
    }
    out.push_back({p + "mlp.gate.weight", {c.n_routed_experts, c.hidden_size}});
    if (c.topk_method == TopkMethod::kNoauxTc) out.push_back({p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}});
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      AddMlp(absl::StrCat(p, "mlp.experts.", e, "."), c.hidden_size, c.moe_intermediate_size, &out);
    }
    if (c.n_shared_experts > 0) {
      AddMlp(p + "mlp.shared_experts.", c.hidden_size, c.moe_intermediate_size * c.n_shared_experts, &out);
    }
  }
  out.push_back({"model.norm.weight", {c.hidden_size}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}});
  return out;
}

bool IsFp8Projection(const std::string& name, const std::vector<int64_t>& shape) {
  return shape.size() == 2 && !absl::StrContains(name, "embed") && !absl::StrContains(name, "lm_head") &&
         !absl::StrContains(name, "mlp.gate.weight");
}

absl::Status QuantizeCheckpointFp8(const std::string& src_dir, const std::string& dst_dir) {
  std::ifstream config_in(src_dir + "/config.json");
  nlohmann::json config = nlohmann::json::parse(config_in, nullptr, false);
  if (config.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(src_dir, "/config.json is not JSON"));
  config["quantization_config"] = {{"quant_method", "fp8"},
                                   {"fmt", "e4m3"},
                                   {"activation_scheme", "dynamic"},
                                   {"weight_block_size", {128, 128}}};
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> src, SafetensorsFile::Open(src_dir + "/model.safetensors"));
  std::vector<TensorToWrite> tensors;
  for (const std::string& name : src->TensorNames()) {
    const TensorView& t = *src->Find(name);
    if (IsFp8Projection(name, t.shape)) {
      std::vector<float> values(t.num_elements());
      ConvertToF32(t.dtype, t.data, values.size(), values.data());
      auto [weight, scale] = QuantizeFp8({name, t.shape}, values);
      tensors.push_back(std::move(weight));
      tensors.push_back(std::move(scale));
    } else {
      tensors.push_back({name, t.dtype, t.shape, std::string(reinterpret_cast<const char*>(t.data), t.num_bytes)});
    }
  }
  std::filesystem::create_directories(dst_dir);
  std::ofstream(dst_dir + "/config.json") << config.dump(2);
  return WriteSafetensors(dst_dir + "/model.safetensors", tensors);
}

absl::Status WriteRandomCheckpoint(const ModelConfig& config, const std::string& dir, uint64_t seed, DType dtype) {
  std::mt19937_64 rng(seed);
  std::vector<TensorToWrite> tensors;
  for (const TensorShape& t : CheckpointTensorShapes(config)) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    std::vector<float> values(n);
    const bool is_norm = absl::StrContains(t.name, "norm");
    const bool is_bias = absl::StrContains(t.name, "bias");
    const double std = t.shape.size() == 2 ? 1.0 / std::sqrt(double(t.shape[1])) : 0.1;
    std::normal_distribution<double> normal(is_norm ? 1.0 : 0.0, is_norm || is_bias ? 0.1 : std);
    for (float& v : values) v = static_cast<float>(normal(rng));
    if (dtype == DType::kF8E4M3 && IsFp8Projection(t.name, t.shape)) {
      auto [weight, scale] = QuantizeFp8(t, values);
      tensors.push_back(std::move(weight));
      tensors.push_back(std::move(scale));
    } else {
      tensors.push_back(Encode(t, values, dtype == DType::kF32 ? DType::kF32 : DType::kBF16));
    }
  }
  return WriteSafetensors(dir + "/model.safetensors", tensors);
}

}  // namespace mlaserve
