#include "worker/worker_service.h"

#include <algorithm>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "worker/sampler.h"

namespace mlaserve {
namespace {

void FillLogprobs(absl::Span<const float> logits, int32_t token, int32_t top_n, internal::v1::TokenLogprobs* out) {
  const SampledLogprobs computed = ComputeLogprobs(logits, token, top_n);
  out->set_token_id(token);
  out->set_logprob(computed.logprob);
  out->mutable_top_token_ids()->Add(computed.top_ids.begin(), computed.top_ids.end());
  out->mutable_top_logprobs()->Add(computed.top_logprobs.begin(), computed.top_logprobs.end());
}

}  // namespace

WorkerService::WorkerService(std::unique_ptr<Ops> ops, RendezvousStore& store, CommunicatorFactory factory)
    : ops_(std::move(ops)), store_(store), factory_(std::move(factory)) {}

grpc::Status WorkerService::LoadShard(grpc::ServerContext*, const internal::v1::LoadShardRequest* request,
                                      internal::v1::LoadShardResponse* response) {
  absl::MutexLock lock(&mu_);
  return ToGrpcStatus(Load(*request, response));
}

absl::Status WorkerService::Load(const internal::v1::LoadShardRequest& request,
                                 internal::v1::LoadShardResponse* response) {
  // A reload replaces everything: the old model goes before its communicators.
  cache_.reset();
  model_.reset();
  comms_ = GroupComms();
  const ParallelPlan plan{.tp = std::max(1, request.tp()),
                          .dp_attention = std::max(1, request.dp_attention()),
                          .ep = std::max(1, request.ep())};
  if (request.group_size() != plan.group_size()) {
    return absl::InvalidArgumentError(absl::StrCat("group_size ", request.group_size(), " does not match the plan ",
                                                   plan.ToString()));
  }
  if (plan.group_size() > 1) {
    std::cerr << "worker: joining group " << request.rendezvous_prefix() << " as rank " << request.group_rank()
              << " of " << plan.ToString() << "\n";
    ASSIGN_OR_RETURN(comms_, ConnectGroup(store_, request.rendezvous_prefix(), plan, request.group_rank(),
                                             absl::Seconds(std::max(1.0, request.comm_timeout_s())), factory_));
  }
  comms_.plan = plan;
  comms_.group_rank = request.group_rank();
  auto progress = [](int64_t done, int64_t total) {
    std::cerr << "worker: loading weights, layer " << done << "/" << total << "\n";
  };
  std::unique_ptr<Model> model;
  if (request.random_weights()) {
    ASSIGN_OR_RETURN(model, Model::LoadRandom(request.model_dir(), *ops_, comms_.shard(), request.random_seed()));
  } else {
    ASSIGN_OR_RETURN(model, Model::Load(request.model_dir(), *ops_, comms_.shard(), progress));
  }
  ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(*ops_, model->config(), request.num_blocks(), request.block_size()));
  model_ = std::move(model);
  cache_.emplace(std::move(cache));
  response->set_num_blocks(cache_->num_blocks());
  response->set_bytes_per_block(cache_->bytes_per_block());
  return absl::OkStatus();
}

grpc::Status WorkerService::Step(grpc::ServerContext*, const internal::v1::StepRequest* request,
                                 internal::v1::StepResponse* response) {
  absl::MutexLock lock(&mu_);
  return ToGrpcStatus(RunStep(*request, response));
}

absl::Status WorkerService::RunStep(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) {
  if (model_ == nullptr) return absl::FailedPreconditionError("Step before LoadShard");
  // This rank computes its attention replica's sequences; the replica's first
  // rank samples them.
  const int replica = comms_.group_rank / comms_.plan.tp;
  const bool samples = comms_.group_rank % comms_.plan.tp == 0;
  std::vector<const internal::v1::StepSequence*> mine;
  for (const internal::v1::StepSequence& s : request.sequences()) {
    if (s.replica() < 0 || s.replica() >= comms_.plan.dp_attention) {
      return absl::InvalidArgumentError(absl::StrCat("request ", s.request_id(), ": replica ", s.replica(),
                                                     " outside the group's ", comms_.plan.dp_attention));
    }
    if (s.replica() == replica) mine.push_back(&s);
  }
  ForwardBatch batch;
  batch.layout.block_size = cache_->block_size();
  for (const internal::v1::StepSequence* sequence : mine) {
    const internal::v1::StepSequence& s = *sequence;
    if (s.token_ids_size() == 0) return absl::InvalidArgumentError(absl::StrCat("request ", s.request_id(), ": no tokens"));
    SequenceSlice slice;
    slice.token_begin = static_cast<int64_t>(batch.token_ids.size());
    slice.num_tokens = s.token_ids_size();
    slice.context_len = s.context_len();
    slice.block_table.assign(s.block_table().begin(), s.block_table().end());
    batch.token_ids.insert(batch.token_ids.end(), s.token_ids().begin(), s.token_ids().end());
    if (s.sample()) batch.logit_rows.push_back(slice.token_begin + slice.num_tokens - 1);
    batch.layout.seqs.push_back(std::move(slice));
  }
  ASSIGN_OR_RETURN(std::vector<float> logits, model_->Forward(batch, *cache_));
  const int64_t vocab = model_->config().vocab_size;
  int64_t row = 0;
  for (const internal::v1::StepSequence* sequence : mine) {
    const internal::v1::StepSequence& s = *sequence;
    if (!s.sample() || !samples) continue;
    const SamplerParams params{.temperature = s.sampling().temperature(), .top_k = s.sampling().top_k(),
                               .top_p = s.sampling().top_p(), .seed = s.sampling().seed()};
    const absl::Span<const float> row_logits = absl::MakeConstSpan(logits).subspan(row * vocab, vocab);
    const int32_t token = SampleToken(row_logits, params, s.sample_index());
    response->add_sampled_token_ids(token);
    internal::v1::TokenLogprobs* logprobs = response->add_logprobs();
    if (s.logprobs()) FillLogprobs(row_logits, token, s.top_logprobs(), logprobs);
    ++row;
  }
  ++steps_;
  tokens_processed_ += static_cast<int64_t>(batch.token_ids.size());
  return absl::OkStatus();
}

grpc::Status WorkerService::GetStats(grpc::ServerContext*, const internal::v1::GetStatsRequest*,
                                     internal::v1::GetStatsResponse* response) {
  absl::MutexLock lock(&mu_);
  if (cache_.has_value()) {
    response->set_num_blocks(cache_->num_blocks());
    response->set_bytes_per_block(cache_->bytes_per_block());
  }
  response->set_steps(steps_);
  response->set_tokens_processed(tokens_processed_);
  return grpc::Status::OK;
}

}  // namespace mlaserve
