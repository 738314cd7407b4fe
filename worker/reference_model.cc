#include "worker/reference_model.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mlaserve {
namespace {

using Vec = std::vector<double>;
using Mat = std::vector<Vec>;  // rows

class Reference {
 public:
  Reference(const ModelConfig& c, const Checkpoint& ck, ReferenceOptions options)
      : c_(c), ck_(ck), options_(options), rope_(RopeFreqs()) {}

  absl::StatusOr<std::vector<float>> Run(const std::vector<int32_t>& ids) {
    const int64_t n = ids.size();
    ASSIGN_OR_RETURN(Mat embed, W("model.embed_tokens.weight", {c_.vocab_size, c_.hidden_size}));
    Mat h(n);
    for (int64_t t = 0; t < n; ++t) h[t] = embed[ids[t]];
    for (int64_t l = 0; l < c_.num_hidden_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      ASSIGN_OR_RETURN(Vec in_norm, V(p + "input_layernorm.weight", c_.hidden_size));
      ASSIGN_OR_RETURN(Mat attn, Attention(p + "self_attn.", Norm(h, in_norm)));
      Add(h, attn);
      ASSIGN_OR_RETURN(Vec post_norm, V(p + "post_attention_layernorm.weight", c_.hidden_size));
      Mat x = Norm(h, post_norm);
      ASSIGN_OR_RETURN(Mat ffn, c_.is_moe_layer(l) ? Moe(p + "mlp.", x) : Mlp(p + "mlp.", x, c_.intermediate_size));
      Add(h, ffn);
    }
    ASSIGN_OR_RETURN(Vec final_norm, V("model.norm.weight", c_.hidden_size));
    ASSIGN_OR_RETURN(Mat head, W(c_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight",
                                 {c_.vocab_size, c_.hidden_size}));
    Mat logits = Lin(Norm(h, final_norm), head);
    std::vector<float> out;
    for (const Vec& row : logits) out.insert(out.end(), row.begin(), row.end());
    return out;
  }

 private:
  absl::StatusOr<Mat> W(const std::string& name, std::vector<int64_t> shape) {
    ASSIGN_OR_RETURN(std::vector<float> f, ck_.ReadF32(name, shape));
    Mat m(shape[0], Vec(shape[1]));
    for (int64_t r = 0; r < shape[0]; ++r) std::copy_n(f.begin() + r * shape[1], shape[1], m[r].begin());
    return m;
  }
  absl::StatusOr<Vec> V(const std::string& name, int64_t n) {
    ASSIGN_OR_RETURN(std::vector<float> f, ck_.ReadF32(name, {n}));
    return Vec(f.begin(), f.end());
  }
  // x times the projection `name`, its input quantized first when the
  // options ask for FP8 activations and the checkpoint stores it in FP8.
  absl::StatusOr<Mat> Proj(const Mat& x, const std::string& name, std::vector<int64_t> shape) {
    ASSIGN_OR_RETURN(Mat w, W(name, shape));
    ASSIGN_OR_RETURN(const TensorView* stored, ck_.Get(name));
    if (!options_.fp8_activations || stored->dtype != DType::kF8E4M3) return Lin(x, w);
    Mat q = x;
    for (Vec& row : q) {
      for (size_t g = 0; g < row.size(); g += 128) {
        const size_t end = std::min(row.size(), g + 128);
        double amax = 0;
        for (size_t i = g; i < end; ++i) amax = std::max(amax, std::fabs(row[i]));
        const float s = std::max(static_cast<float>(amax), 1e-4f) / 448.0f;
        for (size_t i = g; i < end; ++i) row[i] = double(F8E4M3ToF32(F32ToF8E4M3(static_cast<float>(row[i]) / s))) * s;
      }
    }
    return Lin(q, w);
  }
  static Mat Lin(const Mat& x, const Mat& w) {
    Mat y(x.size(), Vec(w.size()));
    for (size_t t = 0; t < x.size(); ++t)
      for (size_t j = 0; j < w.size(); ++j) y[t][j] = std::inner_product(x[t].begin(), x[t].end(), w[j].begin(), 0.0);
    return y;
  }
  Mat Norm(const Mat& x, const Vec& w) const {
    Mat y = x;
    for (Vec& row : y) {
      double ms = 0;
      for (double v : row) ms += v * v;
      double inv = 1.0 / std::sqrt(ms / row.size() + c_.rms_norm_eps);
      for (size_t i = 0; i < row.size(); ++i) row[i] *= inv * w[i];
    }
    return y;
  }
  static void Add(Mat& a, const Mat& b) {
    for (size_t t = 0; t < a.size(); ++t)
      for (size_t i = 0; i < a[t].size(); ++i) a[t][i] += b[t][i];
  }
  static double Silu(double x) { return x / (1 + std::exp(-x)); }

  // transformers' YaRN inverse frequencies and attention factor, in double.
  std::pair<Vec, double> RopeFreqs() const {
    const RopeConfig& r = c_.rope;
    const int64_t d = c_.qk_rope_head_dim;
    Vec inv(d / 2);
    for (int64_t i = 0; i < d / 2; ++i) inv[i] = 1.0 / std::pow(r.theta, double(2 * i) / d);
    if (r.type == RopeType::kDefault) return {inv, 1.0};
    auto corr = [&](double rot) {
      return d * std::log(r.original_max_position_embeddings / (rot * 2 * M_PI)) / (2 * std::log(r.theta));
    };
    double lo = std::max(std::floor(corr(r.beta_fast)), 0.0), hi = std::min(std::ceil(corr(r.beta_slow)), d - 1.0);
    if (!r.truncate) lo = std::max(corr(r.beta_fast), 0.0), hi = std::min(corr(r.beta_slow), d - 1.0);
    if (lo == hi) hi += 0.001;
    for (int64_t i = 0; i < d / 2; ++i) {
      double extrap = 1.0 - std::clamp((i - lo) / (hi - lo), 0.0, 1.0);
      inv[i] = inv[i] / r.factor * (1 - extrap) + inv[i] * extrap;
    }
    auto ms = [&](double m) { return r.factor <= 1 ? 1.0 : 0.1 * m * std::log(r.factor) + 1.0; };
    double af = (r.mscale != 0 && r.mscale_all_dim != 0) ? ms(r.mscale) / ms(r.mscale_all_dim) : ms(1.0);
    return {inv, af};
  }

  // Applies rope to x (length d) at `pos` the way transformers does.
  Vec Rope(Vec x, int64_t pos) const {
    const auto& [inv, af] = rope_;
    const int64_t d = x.size(), half = d / 2;
    if (c_.rope_interleave) {  // view(d/2, 2).transpose: evens then odds
      Vec y(d);
      for (int64_t i = 0; i < half; ++i) y[i] = x[2 * i], y[half + i] = x[2 * i + 1];
      x = y;
    }
    Vec out(d);
    for (int64_t i = 0; i < d; ++i) {
      double angle = double(float(pos) * float(inv[i % half]));
      double rotated = i < half ? -x[i + half] : x[i - half];
      out[i] = (x[i] * std::cos(angle) + rotated * std::sin(angle)) * af;
    }
    return out;
  }

  absl::StatusOr<Mat> Attention(const std::string& p, const Mat& x) {
    const int64_t n = x.size(), H = c_.num_attention_heads, nope = c_.qk_nope_head_dim;
    const int64_t rope = c_.qk_rope_head_dim, dv = c_.v_head_dim, rank = c_.kv_lora_rank;
    Mat q;
    if (c_.q_lora_rank > 0) {
      ASSIGN_OR_RETURN(Mat qa, Proj(x, p + "q_a_proj.weight", {c_.q_lora_rank, c_.hidden_size}));
      ASSIGN_OR_RETURN(Vec qn, V(p + "q_a_layernorm.weight", c_.q_lora_rank));
      ASSIGN_OR_RETURN(q, Proj(Norm(qa, qn), p + "q_b_proj.weight", {H * (nope + rope), c_.q_lora_rank}));
    } else {
      ASSIGN_OR_RETURN(q, Proj(x, p + "q_proj.weight", {H * (nope + rope), c_.hidden_size}));
    }
    ASSIGN_OR_RETURN(Vec kvn, V(p + "kv_a_layernorm.weight", rank));
    ASSIGN_OR_RETURN(Mat kvb, W(p + "kv_b_proj.weight", {H * (nope + dv), rank}));
    ASSIGN_OR_RETURN(Mat ckv, Proj(x, p + "kv_a_proj_with_mqa.weight", {rank + rope, c_.hidden_size}));
    Mat latent(n), k_rot(n);
    for (int64_t t = 0; t < n; ++t) {
      latent[t] = Vec(ckv[t].begin(), ckv[t].begin() + rank);
      k_rot[t] = Rope(Vec(ckv[t].begin() + rank, ckv[t].end()), t);
    }
    Mat kv = Lin(Norm(latent, kvn), kvb);  // [n, H*(nope+dv)]
    double scale = 1.0 / std::sqrt(double(nope + rope));
    if (c_.rope.type == RopeType::kYarn && c_.rope.mscale_all_dim != 0) {
      double m = 0.1 * c_.rope.mscale_all_dim * std::log(c_.rope.factor) + 1.0;
      scale *= m * m;
    }
    Mat o(n, Vec(H * dv, 0.0));
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t t = 0; t < n; ++t) {
        const double* qh = &q[t][h * (nope + rope)];
        Vec q_rot = Rope(Vec(qh + nope, qh + nope + rope), t);
        Vec s(t + 1);
        for (int64_t j = 0; j <= t; ++j) {
          const double* kh = &kv[j][h * (nope + dv)];
          double dot = std::inner_product(qh, qh + nope, kh, 0.0);
          dot += std::inner_product(q_rot.begin(), q_rot.end(), k_rot[j].begin(), 0.0);
          s[j] = dot * scale;
        }
        double mx = *std::max_element(s.begin(), s.end()), sum = 0;
        for (double& v : s) sum += (v = std::exp(v - mx));
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t i = 0; i < dv; ++i) o[t][h * dv + i] += s[j] / sum * kv[j][h * (nope + dv) + nope + i];
      }
    }
    return Proj(o, p + "o_proj.weight", {c_.hidden_size, H * dv});
  }

  absl::StatusOr<Mat> Mlp(const std::string& p, const Mat& x, int64_t inner) {
    ASSIGN_OR_RETURN(Mat a, Proj(x, p + "gate_proj.weight", {inner, c_.hidden_size}));
    ASSIGN_OR_RETURN(Mat b, Proj(x, p + "up_proj.weight", {inner, c_.hidden_size}));
    for (size_t t = 0; t < a.size(); ++t)
      for (int64_t i = 0; i < inner; ++i) a[t][i] = Silu(a[t][i]) * b[t][i];
    return Proj(a, p + "down_proj.weight", {c_.hidden_size, inner});
  }

  // Expert choice for one token, following DeepSeek's gate: scores, optional
  // bias for selection, group limiting, top-k, normalization, scaling.
  std::vector<std::pair<int64_t, double>> Route(const Vec& logits, const Vec& bias) const {
    const int64_t E = logits.size(), G = c_.n_group, per_group = E / G;
    Vec s(E);
    if (c_.scoring_func == ScoringFunc::kSigmoid) {
      for (int64_t e = 0; e < E; ++e) s[e] = 1 / (1 + std::exp(-logits[e]));
    } else {
      double mx = *std::max_element(logits.begin(), logits.end()), sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += (s[e] = std::exp(logits[e] - mx));
      for (double& v : s) v /= sum;
    }
    Vec choice = s;
    for (int64_t e = 0; e < E && !bias.empty(); ++e) choice[e] += bias[e];
    if (c_.topk_method != TopkMethod::kGreedy && G > 1) {
      std::vector<std::pair<double, int64_t>> groups;
      for (int64_t g = 0; g < G; ++g) {
        Vec member(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
        std::sort(member.rbegin(), member.rend());
        double score = c_.topk_method == TopkMethod::kNoauxTc
                           ? member[0] + (per_group > 1 ? member[1] : 0)
                           : *std::max_element(s.begin() + g * per_group, s.begin() + (g + 1) * per_group);
        groups.push_back({-score, g});
      }
      std::sort(groups.begin(), groups.end());
      std::vector<bool> keep(G, false);
      for (int64_t i = 0; i < c_.topk_group; ++i) keep[groups[i].second] = true;
      for (int64_t e = 0; e < E; ++e)
        if (!keep[e / per_group]) choice[e] = -INFINITY;
    }
    std::vector<int64_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return choice[a] > choice[b]; });
    std::vector<std::pair<int64_t, double>> picked;
    double sum = 0;
    for (int64_t k = 0; k < c_.num_experts_per_tok; ++k) sum += s[order[k]];
    const bool norm = c_.norm_topk_prob && c_.num_experts_per_tok > 1;
    const bool v2 = c_.model_type == "deepseek_v2";
    for (int64_t k = 0; k < c_.num_experts_per_tok; ++k) {
      double w = norm ? s[order[k]] / (sum + 1e-20) : s[order[k]];
      if (!(v2 && norm)) w *= c_.routed_scaling_factor;
      picked.push_back({order[k], w});
    }
    return picked;
  }

  absl::StatusOr<Mat> Moe(const std::string& p, const Mat& x) {
    ASSIGN_OR_RETURN(Mat gate, W(p + "gate.weight", {c_.n_routed_experts, c_.hidden_size}));
    Vec bias;
    if (c_.topk_method == TopkMethod::kNoauxTc) {
      ASSIGN_OR_RETURN(bias, V(p + "gate.e_score_correction_bias", c_.n_routed_experts));
    }
    Mat logits = Lin(x, gate), out(x.size(), Vec(c_.hidden_size, 0.0));
    for (size_t t = 0; t < x.size(); ++t) {
      for (auto [e, w] : Route(logits[t], bias)) {
        ASSIGN_OR_RETURN(Mat y, Mlp(absl::StrCat(p, "experts.", e, "."), {x[t]}, c_.moe_intermediate_size));
        for (int64_t i = 0; i < c_.hidden_size; ++i) out[t][i] += w * y[0][i];
      }
    }
    if (c_.n_shared_experts > 0) {
      ASSIGN_OR_RETURN(Mat shared, Mlp(p + "shared_experts.", x, c_.moe_intermediate_size * c_.n_shared_experts));
      Add(out, shared);
    }
    return out;
  }

  const ModelConfig& c_;
  const Checkpoint& ck_;
  const ReferenceOptions options_;
  const std::pair<Vec, double> rope_;  // inverse frequencies, attention factor
};

}  // namespace

absl::StatusOr<std::vector<float>> ReferenceForward(const ModelConfig& config, const Checkpoint& checkpoint,
                                                    const std::vector<int32_t>& ids, ReferenceOptions options) {
  return Reference(config, checkpoint, options).Run(ids);
}

}  // namespace mlaserve
