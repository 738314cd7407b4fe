// How long an engine group's step takes, from what it runs (StepShape): the
// cost the cluster simulator charges a simulated step. Two sources:
//   FittedStepCost   - fitted to steps a real cluster ran (--step_trace);
//   RooflineStepCost - a GPU's measured rates applied to the model's bytes,
//                      FLOPs and collectives, for clusters no machine here has.
#ifndef MLASERVE_SIMULATOR_STEP_COST_H_
#define MLASERVE_SIMULATOR_STEP_COST_H_

#include <array>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model_config.h"
#include "common/shard_layout.h"
#include "coordinator/cluster/weight_bytes.h"
#include "kernels/latent_row.h"
#include "coordinator/serving/step_trace.h"

namespace mlaserve::sim {

class StepCost {
 public:
  virtual ~StepCost() = default;
  // Seconds the group's workers take to run a step of `shape`.
  virtual double Seconds(const StepShape& shape) const = 0;
  // The model's terms, for the report.
  virtual std::string ToString() const = 0;
};

// seconds = c0 + c1 tokens + c2 max_replica_tokens + c3 max_replica_attended
//           + c4 sequences + c5 (1 - (1 - p)^tokens), every c >= 0 (non-negative
// least squares): a fixed cost per step (launches, collectives' latency,
// weights every step reads), the experts' and dense layers' work on every
// token, the busiest replica's attention projections and attention,
// per-sequence bookkeeping, and the routed experts' weights read: the share
// of experts some token of the step touches when each token picks a share p
// of them (p fitted too, from a fixed grid). On a GPU that last term makes
// the step time bend: steep while more tokens touch new experts, flat after.
class FittedStepCost final : public StepCost {
 public:
  static constexpr int kTerms = 6;

  // REQUIRES (else InvalidArgument): at least kTerms samples.
  static absl::StatusOr<FittedStepCost> Fit(absl::Span<const StepSample> samples);

  double Seconds(const StepShape& shape) const override;
  std::string ToString() const override;
  const std::array<double, kTerms>& coefficients() const { return c_; }
  // The share of experts a token touches, as fitted (0: no expert term).
  double expert_share() const { return expert_share_; }
  // Median |predicted - measured| / measured over the fitted samples.
  double median_relative_error() const { return median_relative_error_; }

 private:
  std::array<double, kTerms> c_{};
  double expert_share_ = 0;
  double median_relative_error_ = 0;
};

// Of a dtype's matrix rate, what this project's kernels reach at prefill
// sizes (docs/perf.md): the model's dense projections and the grouped expert GEMM.
struct GemmShares {
  double dense = 1;
  double grouped = 1;
};

// A GPU as the roofline sees it: rates measured on it (docs/perf.md) and the
// links between GPUs.
struct Hardware {
  std::string name;
  double hbm_bytes_per_s = 0;       // measured device-to-device copy
  double fp8_matrix_flops = 0;      // dense GEMM rates (cuBLASLt, measured)
  double bf16_matrix_flops = 0;
  GemmShares bf16_shares, fp8_shares;
  double attention_flops = 0;       // prefill attention (bf16)
  double intra_node_bytes_per_s = 0;  // per GPU, NVLink (NCCL send/recv, measured)
  double inter_node_bytes_per_s = 0;  // per GPU, the network
  double collective_latency_s = 0;    // per collective call
  double layer_overhead_s = 0;        // per layer and step: launches, small kernels, sampling
  int gpus_per_node = 8;
  double memory_bytes = 0;  // per GPU
};

// The named GPUs this project measured (h100, h200); NotFound otherwise.
absl::StatusOr<Hardware> MeasuredHardware(const std::string& name);

// A group of `plan` on `hardware`: per step, weights and latent KV read from
// HBM against matrix and attention FLOPs (the larger of the two, per phase),
// plus the expert all-to-all (EP) and all-reduces (TP) over NVLink or the
// network, whichever the group spans, not overlapped with compute.
class RooflineStepCost final : public StepCost {
 public:
  // `kv_dtype`: what the latent cache's rows hold (kernels/latent_row.h).
  // Errors: the plan does not fit the model (ValidatePlan).
  static absl::StatusOr<RooflineStepCost> Create(const ModelConfig& config, const ParallelPlan& plan,
                                                 const WeightFormat& format, const Hardware& hardware,
                                                 KvCacheDtype kv_dtype = KvCacheDtype::kStorage);

  double Seconds(const StepShape& shape) const override;
  std::string ToString() const override;
  // Bytes of weights one rank keeps.
  double rank_weight_bytes() const { return rank_weight_bytes_; }
  // Bytes of latent KV per token, every layer.
  double kv_bytes_per_token() const { return kv_bytes_per_token_; }

 private:
  RooflineStepCost() = default;

  ParallelPlan plan_;
  Hardware hw_;
  double rank_weight_bytes_ = 0;
  double dense_read_bytes_ = 0;     // weights read every step whatever the tokens (not the embedding, a lookup)
  double routed_expert_bytes_ = 0;  // one routed expert, every MoE layer
  double experts_per_rank_ = 0;
  double routed_experts_ = 0;
  double experts_per_token_ = 0;
  double dense_params_per_token_ = 0;   // per rank: attention, dense MLPs, shared experts, LM head share
  double expert_params_per_token_ = 0;  // one routed expert, every MoE layer
  double kv_bytes_per_token_ = 0;
  double attention_flops_per_pair_ = 0;  // per rank, every layer, prefill (expanded) form
  double moe_layers_ = 0;
  double layers_ = 0;
  double hidden_ = 0;
  double link_bytes_per_s_ = 0;  // the slowest link the group's collectives cross
  double matrix_flops_ = 0;      // in the weights' dtype
  GemmShares shares_;            // in the weights' dtype
};

}  // namespace mlaserve::sim

#endif  // MLASERVE_SIMULATOR_STEP_COST_H_
