#include "worker/worker_service.h"

#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "worker/sampler.h"

namespace mlaserve {

WorkerService::WorkerService(std::unique_ptr<Ops> ops) : ops_(std::move(ops)) {}

grpc::Status WorkerService::LoadShard(grpc::ServerContext*, const internal::v1::LoadShardRequest* request,
                                      internal::v1::LoadShardResponse* response) {
  absl::MutexLock lock(&mu_);
  if (request->group_size() != 1) {
    return ToGrpcStatus(absl::UnimplementedError("sharded groups are not supported by this worker yet"));
  }
  auto progress = [](int64_t done, int64_t total) {
    std::cerr << "worker: loading weights, layer " << done << "/" << total << "\n";
  };
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(request->model_dir(), *ops_, progress);
  if (!model.ok()) return ToGrpcStatus(model.status());
  absl::StatusOr<KvCache> cache =
      KvCache::Create(*ops_, (*model)->config(), request->num_blocks(), request->block_size());
  if (!cache.ok()) return ToGrpcStatus(cache.status());
  model_ = *std::move(model);
  cache_.emplace(*std::move(cache));
  response->set_num_blocks(cache_->num_blocks());
  response->set_bytes_per_block(cache_->bytes_per_block());
  return grpc::Status::OK;
}

grpc::Status WorkerService::Step(grpc::ServerContext*, const internal::v1::StepRequest* request,
                                 internal::v1::StepResponse* response) {
  absl::MutexLock lock(&mu_);
  return ToGrpcStatus(RunStep(*request, response));
}

absl::Status WorkerService::RunStep(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) {
  if (model_ == nullptr) return absl::FailedPreconditionError("Step before LoadShard");
  ForwardBatch batch;
  batch.layout.block_size = cache_->block_size();
  for (const internal::v1::StepSequence& s : request.sequences()) {
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
  for (const internal::v1::StepSequence& s : request.sequences()) {
    if (!s.sample()) continue;
    const SamplerParams params{.temperature = s.sampling().temperature(), .top_k = s.sampling().top_k(),
                               .top_p = s.sampling().top_p(), .seed = s.sampling().seed()};
    response->add_sampled_token_ids(
        SampleToken(absl::MakeConstSpan(logits).subspan(row * vocab, vocab), params, s.sample_index()));
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
