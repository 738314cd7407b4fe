// Expert parallelism for one MoE layer: the routed experts are spread over the
// ranks of an engine group (common/shard_layout.h), so each token travels to
// the ranks that own its chosen experts and its weighted expert outputs travel
// back. Within an attention replica every rank holds the same tokens; each
// rank dispatches only its own contiguous slice of them, so every token is
// computed once per replica.
//
// The math is that of Ops::MoeExperts on one rank: out[t] = sum over k of
// weight[t, k] * expert_{id[t, k]}(x[t]); an expert split along its inner
// dimension returns partial outputs from each of its ranks, which add up.
#ifndef MLASERVE_WORKER_EXPERT_DISPATCH_H_
#define MLASERVE_WORKER_EXPERT_DISPATCH_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/shard_layout.h"
#include "kernels/ops.h"
#include "worker/comm/communicator.h"

namespace mlaserve {

class ExpertDispatch {
 public:
  // `group` spans the whole engine group; neither it nor `ops` is owned.
  ExpertDispatch(const ShardLayout& shard, int64_t num_experts, Ops& ops, Communicator& group);

  // x[T, D] and the routing of its T tokens (host copies of the router's
  // top-k ids and weights, T * top_k each); gate_up/down are this rank's
  // experts. Returns [T, D] with the routed-expert output in the rows of the
  // tokens this rank dispatched and zeros elsewhere. Every rank of the group
  // must call it for the layer, T = 0 included.
  absl::StatusOr<Tensor> Run(const Tensor& x, const std::vector<float>& topk_ids,
                             const std::vector<float>& topk_weights, int64_t top_k, const Tensor& gate_up,
                             const Tensor& down);

 private:
  // One (token, expert) pair bound for a rank.
  struct Route {
    int32_t token;
    float expert;
    float weight;
  };
  std::vector<std::vector<Route>> Plan(int64_t num_tokens, const std::vector<float>& topk_ids,
                                       const std::vector<float>& topk_weights, int64_t top_k) const;
  // Counts this rank will receive from each peer, given what it sends.
  absl::StatusOr<std::vector<int64_t>> ExchangeCounts(const std::vector<int64_t>& send_counts);
  absl::StatusOr<Tensor> AllToAll(const Tensor& send, const std::vector<int64_t>& send_rows,
                                  const std::vector<int64_t>& recv_rows);
  absl::StatusOr<Tensor> Upload(const std::vector<float>& values, DType dtype, std::vector<int64_t> shape);

  const ShardLayout shard_;
  const int64_t num_experts_;
  Ops& ops_;
  Communicator& group_;
};

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_EXPERT_DISPATCH_H_
