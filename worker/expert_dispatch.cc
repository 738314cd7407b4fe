#include "worker/expert_dispatch.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mlaserve {

ExpertDispatch::ExpertDispatch(const ShardLayout& shard, int64_t num_experts, Ops& ops, Communicator& group)
    : shard_(shard), num_experts_(num_experts), ops_(ops), group_(group) {}

std::vector<std::vector<ExpertDispatch::Route>> ExpertDispatch::Plan(int64_t num_tokens,
                                                                     const std::vector<float>& topk_ids,
                                                                     const std::vector<float>& topk_weights,
                                                                     int64_t top_k) const {
  std::vector<std::vector<Route>> routes(group_.size());
  const int tp = shard_.plan.tp;
  const int64_t begin = shard_.tp_rank * num_tokens / tp, end = (shard_.tp_rank + 1) * num_tokens / tp;
  for (int64_t t = begin; t < end; ++t) {
    for (int64_t k = 0; k < top_k; ++k) {
      const int64_t expert = static_cast<int64_t>(topk_ids[t * top_k + k]);
      const int slot = shard_.SlotOfExpert(expert, num_experts_);
      for (int m = 0; m < shard_.plan.moe_tp(); ++m) {
        routes[shard_.ExpertRank(slot, m)].push_back(
            {static_cast<int32_t>(t), static_cast<float>(expert), topk_weights[t * top_k + k]});
      }
    }
  }
  return routes;
}

absl::StatusOr<Tensor> ExpertDispatch::Upload(const std::vector<float>& values, DType dtype,
                                              std::vector<int64_t> shape) {
  ASSIGN_OR_RETURN(Tensor t, ops_.Empty(dtype, std::move(shape)));
  RETURN_IF_ERROR(ops_.Upload(values, &t));
  return t;
}

absl::StatusOr<std::vector<int64_t>> ExpertDispatch::ExchangeCounts(const std::vector<int64_t>& send_counts) {
  const int64_t ranks = group_.size();
  // Counts travel as float32 in backend memory so that the NCCL path works
  // on device buffers too; they stay far below 2^24.
  ASSIGN_OR_RETURN(Tensor send, Upload(std::vector<float>(send_counts.begin(), send_counts.end()), DType::kF32, {ranks}));
  ASSIGN_OR_RETURN(Tensor recv, ops_.Empty(DType::kF32, {ranks}));
  const std::vector<int64_t> ones(ranks, 1);
  RETURN_IF_ERROR(ReadyForCollective(ops_, group_));
  RETURN_IF_ERROR(group_.AllToAllV(send.data, ones, recv.data, ones, DType::kF32));
  std::vector<float> host(ranks);
  RETURN_IF_ERROR(ops_.Download(recv, absl::MakeSpan(host)));
  return std::vector<int64_t>(host.begin(), host.end());
}

absl::StatusOr<Tensor> ExpertDispatch::AllToAll(const Tensor& send, const std::vector<int64_t>& send_rows,
                                                const std::vector<int64_t>& recv_rows) {
  int64_t total = 0;
  for (int64_t r : recv_rows) total += r;
  ASSIGN_OR_RETURN(Tensor recv, ops_.Empty(send.dtype, {total, send.dim(1)}));
  std::vector<int64_t> send_counts, recv_counts;
  for (int64_t r : send_rows) send_counts.push_back(r * send.dim(1));
  for (int64_t r : recv_rows) recv_counts.push_back(r * send.dim(1));
  RETURN_IF_ERROR(ReadyForCollective(ops_, group_));
  RETURN_IF_ERROR(group_.AllToAllV(send.data, send_counts, recv.data, recv_counts, send.dtype));
  return recv;
}

absl::StatusOr<Tensor> ExpertDispatch::Run(const Tensor& x, const std::vector<float>& topk_ids,
                                           const std::vector<float>& topk_weights, int64_t top_k,
                                           const Tensor& gate_up, const Tensor& down) {
  const int64_t num_tokens = x.dim(0), d = x.dim(1);
  if (static_cast<int64_t>(topk_ids.size()) != num_tokens * top_k || topk_weights.size() != topk_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat("expert dispatch: routing of ", topk_ids.size(), " entries for ",
                                                   num_tokens, " tokens x top_k ", top_k));
  }
  const std::vector<std::vector<Route>> routes = Plan(num_tokens, topk_ids, topk_weights, top_k);
  std::vector<int64_t> send_rows;
  std::vector<int32_t> tokens;
  std::vector<float> meta;  // (expert, weight) per sent row
  for (const std::vector<Route>& to_rank : routes) {
    send_rows.push_back(static_cast<int64_t>(to_rank.size()));
    for (const Route& r : to_rank) {
      tokens.push_back(r.token);
      meta.push_back(r.expert);
      meta.push_back(r.weight);
    }
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> recv_rows, ExchangeCounts(send_rows));
  const int64_t sent = static_cast<int64_t>(tokens.size());
  // Gathering rows is an embedding lookup with x as the table.
  ASSIGN_OR_RETURN(Tensor x_send, ops_.Empty(x.dtype, {sent, d}));
  if (sent > 0) RETURN_IF_ERROR(ops_.Embedding(x, tokens, &x_send));
  ASSIGN_OR_RETURN(Tensor meta_send, Upload(meta, DType::kF32, {sent, 2}));
  ASSIGN_OR_RETURN(Tensor x_recv, AllToAll(x_send, send_rows, recv_rows));
  ASSIGN_OR_RETURN(Tensor meta_recv, AllToAll(meta_send, send_rows, recv_rows));

  const int64_t received = x_recv.dim(0);
  std::vector<float> meta_host(received * 2), ids(received), weights(received);
  RETURN_IF_ERROR(ops_.Download(meta_recv, absl::MakeSpan(meta_host)));
  for (int64_t i = 0; i < received; ++i) {
    ids[i] = meta_host[2 * i];
    weights[i] = meta_host[2 * i + 1];
  }
  ASSIGN_OR_RETURN(Tensor y_recv, ops_.Empty(x.dtype, {received, d}));
  if (received > 0) {
    ASSIGN_OR_RETURN(Tensor ids_t, Upload(ids, DType::kI32, {received, 1}));
    ASSIGN_OR_RETURN(Tensor weights_t, Upload(weights, DType::kF32, {received, 1}));
    RETURN_IF_ERROR(ops_.MoeExperts(x_recv, ids_t, weights_t, gate_up, down, shard_.experts.begin, &y_recv));
  }
  ASSIGN_OR_RETURN(Tensor y_send, AllToAll(y_recv, recv_rows, send_rows));
  ASSIGN_OR_RETURN(Tensor out, ops_.Empty(x.dtype, {num_tokens, d}));
  RETURN_IF_ERROR(ops_.Fill(&out, 0.0f));
  if (sent > 0) RETURN_IF_ERROR(ops_.AddRows(y_send, tokens, &out));
  return out;
}

}  // namespace mlaserve
