#include "kernels/rope_table.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mlaserve {
namespace {

constexpr double kPi = 3.14159265358979323846;

double YarnMscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

// The dimension index whose wavelength makes `num_rotations` turns over the
// original context.
double CorrectionDim(double num_rotations, double dim, double base, double max_positions) {
  return dim * std::log(max_positions / (num_rotations * 2 * kPi)) / (2 * std::log(base));
}

}  // namespace

absl::StatusOr<RopeTable> MakeRopeTable(const ModelConfig& config) {
  const int64_t dim = config.qk_rope_head_dim;
  if (dim <= 0 || dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("qk_rope_head_dim must be even and positive, got ", dim));
  }
  const RopeConfig& rope = config.rope;
  RopeTable table;
  table.rope_dim = dim;
  table.interleaved = config.rope_interleave;
  table.inv_freq.resize(dim / 2);
  // transformers computes base**(2i/dim) in float32; so do we, to agree at far positions.
  std::vector<float> pos_freq(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i) {
    pos_freq[i] = std::pow(static_cast<float>(rope.theta), static_cast<float>(2 * i) / static_cast<float>(dim));
  }
  if (rope.type == RopeType::kDefault) {
    for (int64_t i = 0; i < dim / 2; ++i) table.inv_freq[i] = 1.0f / pos_freq[i];
    return table;
  }
  double low = CorrectionDim(rope.beta_fast, dim, rope.theta, rope.original_max_position_embeddings);
  double high = CorrectionDim(rope.beta_slow, dim, rope.theta, rope.original_max_position_embeddings);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < dim / 2; ++i) {
    float ramp = std::clamp(static_cast<float>((i - low) / (high - low)), 0.0f, 1.0f);
    float extrapolation_weight = 1.0f - ramp;
    float extrapolated = 1.0f / pos_freq[i];
    float interpolated = 1.0f / (static_cast<float>(rope.factor) * pos_freq[i]);
    table.inv_freq[i] = interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight;
  }
  if (rope.mscale != 0 && rope.mscale_all_dim != 0) {
    table.attention_factor =
        static_cast<float>(YarnMscale(rope.factor, rope.mscale) / YarnMscale(rope.factor, rope.mscale_all_dim));
  } else {
    table.attention_factor = static_cast<float>(YarnMscale(rope.factor, 1.0));
  }
  return table;
}

float MlaSoftmaxScale(const ModelConfig& config) {
  double scale = 1.0 / std::sqrt(static_cast<double>(config.qk_head_dim()));
  if (config.rope.type == RopeType::kYarn && config.rope.mscale_all_dim != 0) {
    double m = YarnMscale(config.rope.factor, config.rope.mscale_all_dim);
    scale *= m * m;
  }
  return static_cast<float>(scale);
}

}  // namespace mlaserve
