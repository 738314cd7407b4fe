#include "simulator/step_cost.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace mlaserve::sim {
namespace {

std::array<double, FittedStepCost::kTerms> Features(const StepShape& s, double expert_share) {
  const double tokens = static_cast<double>(s.tokens);
  return {1.0,
          tokens,
          static_cast<double>(s.max_replica_tokens),
          static_cast<double>(s.max_replica_attended),
          static_cast<double>(s.sequences),
          1.0 - std::pow(1.0 - expert_share, tokens)};
}

// Least squares over the terms in `active` (the others held at 0), through
// the normal equations; the features differ in scale by orders of magnitude,
// so each column is scaled to unit norm first. Hand-written: a 6x6 solve
// needs no linear-algebra library.
std::array<double, FittedStepCost::kTerms> SolveActive(absl::Span<const StepSample> samples, double expert_share,
                                                       const std::array<bool, FittedStepCost::kTerms>& active) {
  constexpr int n = FittedStepCost::kTerms;
  std::array<double, n> norm{};
  for (const StepSample& s : samples) {
    const auto f = Features(s.shape, expert_share);
    for (int i = 0; i < n; ++i) norm[i] += f[i] * f[i];
  }
  for (double& v : norm) v = v > 0 ? std::sqrt(v) : 1.0;
  double a[n][n + 1] = {};
  for (const StepSample& s : samples) {
    const auto f = Features(s.shape, expert_share);
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) a[i][j] += f[i] / norm[i] * f[j] / norm[j];
      a[i][n] += f[i] / norm[i] * s.seconds;
    }
  }
  for (int i = 0; i < n; ++i) {
    a[i][i] += 1e-9;  // a column of zeros (no prefill in the trace, say) stays solvable
    if (active[i]) continue;
    for (int j = 0; j <= n; ++j) a[i][j] = 0;
    for (int j = 0; j < n; ++j) a[j][i] = 0;
    a[i][i] = 1;
  }
  for (int col = 0; col < n; ++col) {
    int pivot = col;
    for (int r = col + 1; r < n; ++r) {
      if (std::abs(a[r][col]) > std::abs(a[pivot][col])) pivot = r;
    }
    std::swap(a[col], a[pivot]);
    for (int r = 0; r < n; ++r) {
      if (r == col || a[col][col] == 0) continue;
      const double factor = a[r][col] / a[col][col];
      for (int j = col; j <= n; ++j) a[r][j] -= factor * a[col][j];
    }
  }
  std::array<double, n> c{};
  for (int i = 0; i < n; ++i) c[i] = active[i] && a[i][i] != 0 ? a[i][n] / a[i][i] / norm[i] : 0.0;
  return c;
}

// Non-negative least squares at one expert share: drop the most negative
// term and solve again (Lawson and Hanson's active set, in its simplest form;
// at most kTerms rounds).
std::array<double, FittedStepCost::kTerms> SolveNonNegative(absl::Span<const StepSample> samples,
                                                            double expert_share) {
  constexpr int n = FittedStepCost::kTerms;
  std::array<bool, n> active;
  active.fill(true);
  std::array<double, n> c{};
  for (int round = 0; round < n; ++round) {
    c = SolveActive(samples, expert_share, active);
    int most_negative = -1;
    for (int i = 0; i < n; ++i) {
      if (active[i] && c[i] < 0 && (most_negative < 0 || c[i] < c[most_negative])) most_negative = i;
    }
    if (most_negative < 0) break;
    active[most_negative] = false;
  }
  for (double& v : c) v = std::max(v, 0.0);
  return c;
}

double SquaredError(absl::Span<const StepSample> samples, double expert_share,
                    const std::array<double, FittedStepCost::kTerms>& c) {
  double sum = 0;
  for (const StepSample& s : samples) {
    const auto f = Features(s.shape, expert_share);
    double t = 0;
    for (int i = 0; i < FittedStepCost::kTerms; ++i) t += c[i] * f[i];
    sum += (t - s.seconds) * (t - s.seconds);
  }
  return sum;
}

}  // namespace

absl::StatusOr<FittedStepCost> FittedStepCost::Fit(absl::Span<const StepSample> samples) {
  if (samples.size() < static_cast<size_t>(kTerms)) {
    return absl::InvalidArgumentError(
        absl::StrCat("fitting a step cost needs at least ", kTerms, " steps; the trace has ", samples.size()));
  }
  // The expert share: 0 (no expert term), then a grid of factors of sqrt(2)
  // from 1/2 down to 1/1024 (DeepSeek-V3 picks 8 of 256, V2-Lite 6 of 64,
  // Kimi K2 8 of 384). A later share must beat the best fit by more than
  // rounding: where every step has many tokens, a large share's term is 1 to
  // within 1e-12 and would otherwise take half of the constant by noise.
  std::vector<double> shares = {0.0};
  for (int k = 2; k <= 20; ++k) shares.push_back(std::pow(2.0, -0.5 * k));
  double total = 0;
  for (const StepSample& s : samples) total += s.seconds * s.seconds;
  const double rounding = 1e-10 * total;
  FittedStepCost cost;
  double best = std::numeric_limits<double>::infinity();
  for (const double share : shares) {
    const std::array<double, kTerms> c = SolveNonNegative(samples, share);
    const double error = SquaredError(samples, share, c);
    if (error < best - rounding) best = error, cost.c_ = c, cost.expert_share_ = share;
  }
  std::vector<double> errors;
  for (const StepSample& s : samples) {
    if (s.seconds > 0) errors.push_back(std::abs(cost.Seconds(s.shape) - s.seconds) / s.seconds);
  }
  if (!errors.empty()) {
    std::nth_element(errors.begin(), errors.begin() + errors.size() / 2, errors.end());
    cost.median_relative_error_ = errors[errors.size() / 2];
  }
  return cost;
}

double FittedStepCost::Seconds(const StepShape& shape) const {
  const auto f = Features(shape, expert_share_);
  double t = 0;
  for (int i = 0; i < kTerms; ++i) t += c_[i] * f[i];
  return t;
}

std::string FittedStepCost::ToString() const {
  return absl::StrFormat(
      "%.3f ms + %.2f us/token + %.2f us/token of the busiest replica + %.4f us/attended pair + %.2f us/sequence "
      "+ %.3f ms x the share of experts touched (each token touching %.4f of them) (median step error %.1f%%)",
      c_[0] * 1e3, c_[1] * 1e6, c_[2] * 1e6, c_[3] * 1e6, c_[4] * 1e6, c_[5] * 1e3, expert_share_,
      100 * median_relative_error_);
}

absl::StatusOr<Hardware> MeasuredHardware(const std::string& name) {
  // Rates from docs/perf.md; what no run here measured is marked assumed.
  // layer_overhead: batch-1 whole-model decode of V2-Lite on one H100 took
  // 5.9 ms a step against a 1.64 ms roofline (2026-12-05): 0.158 ms per layer
  // of launches, small kernels and sampling the roofline does not see.
  // The GEMM shares are this project's kernels on an H100 (2026-12-07):
  // FP8 dense projections (o_proj, mlp_down) at 4K rows 353-380 of 1,600
  // TFLOP/s, the FP8 grouped GEMM of one EP8 rank at 4K tokens 247-266;
  // bf16 projections at 512 rows 229-658 of 805 (2026-12-05), the bf16 MoE
  // layer of V2-Lite at 4K tokens 187 of 819. The H200 has the H100's SMs
  // and clocks: the same shares are assumed there. (The FP8 prefill tiles of
  // 256 weight rows since are within -3% to +22% of these, on an H200.)
  const GemmShares bf16_shares{.dense = 0.54, .grouped = 0.23}, fp8_shares{.dense = 0.22, .grouped = 0.16};
  if (name == "h200") {
    return Hardware{.name = "h200",
                    .hbm_bytes_per_s = 4.253e12,       // copy, 2026-12-07
                    .fp8_matrix_flops = 1.640e15,      // cuBLASLt 8192^3, 2026-12-07
                    .bf16_matrix_flops = 869e12,
                    .bf16_shares = bf16_shares,
                    .fp8_shares = fp8_shares,
                    .attention_flops = 219e12,         // the expanded path of an 8K chunk at 32K-128K, 2026-12-07
                    .intra_node_bytes_per_s = 370e9,   // NCCL send/recv, 2 x H200
                    .inter_node_bytes_per_s = 50e9,    // assumed: one 400 Gb/s NIC per GPU
                    .collective_latency_s = 25e-6,     // assumed
                    .layer_overhead_s = 0.158e-3,
                    .gpus_per_node = 8,
                    .memory_bytes = 141e9};
  }
  if (name == "h100") {
    return Hardware{.name = "h100",
                    .hbm_bytes_per_s = 3.01e12,        // copy
                    .fp8_matrix_flops = 1.600e15,      // cuBLASLt 8192^3, 2026-12-07
                    .bf16_matrix_flops = 805e12,       // cuBLAS 8192^3
                    .bf16_shares = bf16_shares,
                    .fp8_shares = fp8_shares,
                    .attention_flops = 218e12,         // the expanded path of an 8K chunk at 32K-128K, 2026-12-07
                    .intra_node_bytes_per_s = 370e9,   // assumed as on H200 (NVLink 4 both)
                    .inter_node_bytes_per_s = 50e9,    // assumed
                    .collective_latency_s = 25e-6,     // assumed
                    .layer_overhead_s = 0.158e-3,
                    .gpus_per_node = 8,
                    .memory_bytes = 80e9};
  }
  return absl::NotFoundError(absl::StrCat("no measured GPU named '", name, "' (h100, h200)"));
}

absl::StatusOr<RooflineStepCost> RooflineStepCost::Create(const ModelConfig& config, const ParallelPlan& plan,
                                                          const WeightFormat& format, const Hardware& hardware,
                                                          KvCacheDtype kv_dtype) {
  RETURN_IF_ERROR(ValidatePlan(config, plan));
  ASSIGN_OR_RETURN(const ShardLayout shard, MakeShardLayout(config, plan, 0));
  RooflineStepCost cost;
  cost.plan_ = plan;
  cost.hw_ = hardware;
  cost.rank_weight_bytes_ = static_cast<double>(ShardWeightBytes(config, shard, format));
  cost.layers_ = static_cast<double>(config.num_hidden_layers);
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) cost.moe_layers_ += config.is_moe_layer(layer);
  cost.hidden_ = static_cast<double>(config.hidden_size);
  const double expert_params = 3.0 * config.hidden_size * config.moe_intermediate_size * cost.moe_layers_;
  const double projection_bytes = format.keep_fp8 || format.quantize_fp8 ? 1.0 + 4.0 / kFp8ScaleColumns
                                                                          : static_cast<double>(format.dense_bytes);
  cost.routed_expert_bytes_ = expert_params * projection_bytes;
  cost.routed_experts_ = static_cast<double>(config.n_routed_experts);
  cost.experts_per_rank_ = cost.routed_experts_ / plan.ep;
  cost.experts_per_token_ = static_cast<double>(config.num_experts_per_tok);
  cost.expert_params_per_token_ = expert_params;
  // What one token runs on this rank outside the routed experts, from the
  // parameters it holds (the embedding is a lookup, not a GEMM).
  const double rank_params = static_cast<double>(ShardParameterCount(config, shard));
  const double routed_here = cost.experts_per_rank_ * expert_params / (static_cast<double>(plan.moe_tp()));
  const double embedding = static_cast<double>(shard.vocab.size()) * config.hidden_size;
  cost.dense_params_per_token_ = std::max(0.0, rank_params - routed_here - embedding);
  cost.dense_read_bytes_ = cost.rank_weight_bytes_ - cost.experts_per_rank_ * cost.routed_expert_bytes_ / plan.moe_tp() -
                           embedding * static_cast<double>(format.dense_bytes);
  cost.kv_bytes_per_token_ =  // every layer's row, bf16 or FP8
      static_cast<double>(LatentRowBytes(config.kv_lora_rank, config.qk_rope_head_dim, 2, kv_dtype)) * cost.layers_;
  const double heads = static_cast<double>(config.num_attention_heads) / plan.tp;
  cost.attention_flops_per_pair_ =
      2.0 * heads * static_cast<double>(config.qk_head_dim() + config.v_head_dim) * cost.layers_;
  const bool fp8 = format.keep_fp8 || format.quantize_fp8;
  cost.matrix_flops_ = fp8 ? hardware.fp8_matrix_flops : hardware.bf16_matrix_flops;
  cost.shares_ = fp8 ? hardware.fp8_shares : hardware.bf16_shares;
  const bool spans_nodes = plan.group_size() > hardware.gpus_per_node;
  cost.link_bytes_per_s_ = spans_nodes ? hardware.inter_node_bytes_per_s : hardware.intra_node_bytes_per_s;
  return cost;
}

double RooflineStepCost::Seconds(const StepShape& shape) const {
  const double group_tokens = static_cast<double>(shape.tokens);
  const double replica_tokens = static_cast<double>(shape.max_replica_tokens);
  // Each rank's attention, dense layers and shared experts run its replica's tokens.
  const double dense_s = std::max(dense_read_bytes_ / hw_.hbm_bytes_per_s,
                                  2.0 * replica_tokens * dense_params_per_token_ /
                                      (matrix_flops_ * shares_.dense));
  // Attention: decodes read the latent of their context (bandwidth, or
  // FLOPs where many heads make them compute-bound), prompt chunks compute
  // every pair (FLOPs); each on the replica with the most of it. (A prompt
  // concentrated on one replica is not spread over the others: context
  // parallelism splits it, and the shape says so.)
  const double decode_pairs = static_cast<double>(shape.max_replica_decode_attended);
  const double prompt_pairs = static_cast<double>(shape.max_replica_prompt_attended);
  const double attention_s = std::max(decode_pairs * kv_bytes_per_token_ / hw_.hbm_bytes_per_s,
                                      decode_pairs * attention_flops_per_pair_ / hw_.attention_flops) +
                             prompt_pairs * attention_flops_per_pair_ / hw_.attention_flops;
  // Routed experts: a rank's experts touched by some token (each token picks
  // experts_per_token of routed_experts) are read once; their FLOPs at the
  // grouped GEMM's rate.
  const double touched = 1.0 - std::pow(1.0 - experts_per_token_ / routed_experts_, group_tokens);
  const double expert_read = experts_per_rank_ * touched * routed_expert_bytes_ / plan_.moe_tp();
  const double expert_flops = 2.0 * group_tokens * experts_per_token_ * expert_params_per_token_ / plan_.group_size();
  const double experts_s =
      routed_experts_ > 0 ? std::max(expert_read / hw_.hbm_bytes_per_s,
                                     expert_flops / (matrix_flops_ * shares_.grouped))
                          : 0.0;
  // Collectives per layer: EP dispatch (FP8) and combine (bf16) of the
  // replica's tokens to the other ranks; TP all-reduces of the hidden state
  // after attention and MLP (ring: 2 (tp-1)/tp of the bytes).
  double comm_s = 0;
  if (plan_.ep > 1 && routed_experts_ > 0) {
    const double bytes = replica_tokens * experts_per_token_ * hidden_ * 3.0 * (plan_.ep - 1) / plan_.ep;
    comm_s += moe_layers_ * (bytes / link_bytes_per_s_ + 2 * hw_.collective_latency_s);
  }
  if (plan_.tp > 1) {
    const double bytes = 2.0 * (plan_.tp - 1) / plan_.tp * replica_tokens * hidden_ * 2.0;
    comm_s += 2 * layers_ * (bytes / link_bytes_per_s_ + hw_.collective_latency_s);
  }
  return layers_ * hw_.layer_overhead_s + dense_s + attention_s + experts_s + comm_s;
}

std::string RooflineStepCost::ToString() const {
  return absl::StrFormat("roofline on %s, %s: %.1f GB of weights per rank, %.0f bytes of latent KV per token",
                         hw_.name, plan_.ToString(), rank_weight_bytes_ / 1e9, kv_bytes_per_token_);
}

}  // namespace mlaserve::sim
