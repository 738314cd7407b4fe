#include "worker/worker_service.h"

#include <algorithm>
#include <cstring>
#include <iostream>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "kernels/sampler.h"
#include "worker/block_io.h"

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

WorkerService::WorkerService(std::unique_ptr<Ops> ops, RendezvousStore& store, CommunicatorFactory factory,
                             absl::Duration transfer_chunk_delay)
    : ops_(std::move(ops)),
      store_(store),
      factory_(std::move(factory)),
      transfer_chunk_delay_(transfer_chunk_delay),
      links_(store, factory_) {}

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
  ASSIGN_OR_RETURN(const Tensor logits, model_->ForwardLogits(batch, *cache_));
  if (samples) RETURN_IF_ERROR(SampleRows(mine, logits, response));
  ++steps_;
  tokens_processed_ += static_cast<int64_t>(batch.token_ids.size());
  return absl::OkStatus();
}

absl::Status WorkerService::SampleRows(const std::vector<const internal::v1::StepSequence*>& mine,
                                       const Tensor& logits, internal::v1::StepResponse* response) {
  std::vector<const internal::v1::StepSequence*> sampling;
  std::vector<SamplerParams> params;
  std::vector<int64_t> draw_indices;
  bool logprobs = false;
  for (const internal::v1::StepSequence* s : mine) {
    if (!s->sample()) continue;
    sampling.push_back(s);
    params.push_back({.temperature = s->sampling().temperature(), .top_k = s->sampling().top_k(),
                      .top_p = s->sampling().top_p(), .seed = s->sampling().seed()});
    draw_indices.push_back(s->sample_index());
    logprobs = logprobs || s->logprobs();
  }
  const int64_t vocab = model_->config().vocab_size;
  std::vector<int32_t> tokens(sampling.size());
  RETURN_IF_ERROR(ops_->SampleTokens(logits, vocab, params, draw_indices, absl::MakeSpan(tokens)));
  std::vector<float> host_logits;
  if (logprobs) {
    ASSIGN_OR_RETURN(host_logits, model_->LogitsToHost(logits));
  }
  for (size_t row = 0; row < sampling.size(); ++row) {
    response->add_sampled_token_ids(tokens[row]);
    internal::v1::TokenLogprobs* out = response->add_logprobs();
    if (!sampling[row]->logprobs()) continue;
    FillLogprobs(absl::MakeConstSpan(host_logits).subspan(row * vocab, vocab), tokens[row],
                 sampling[row]->top_logprobs(), out);
  }
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

int64_t WorkerService::BlocksPerChunk() {
  const int64_t bytes = ValuesPerBlock(cache_->pool()) * static_cast<int64_t>(sizeof(float));
  return std::max<int64_t>(1, (int64_t{4} << 20) / bytes);
}

grpc::Status WorkerService::ReadBlocks(grpc::ServerContext* context, const internal::v1::ReadBlocksRequest* request,
                                       grpc::ServerWriter<internal::v1::BlockChunk>* writer) {
  const std::vector<int32_t> blocks(request->blocks().begin(), request->blocks().end());
  size_t next = 0;
  while (next < blocks.size()) {
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "reader went away");
    internal::v1::BlockChunk chunk;
    {
      // Between steps: the blocks read are full and pinned by the
      // coordinator, but the pool is shared with the forward pass.
      absl::MutexLock lock(&mu_);
      if (!cache_.has_value()) return ToGrpcStatus(absl::FailedPreconditionError("ReadBlocks before LoadShard"));
      const size_t count = std::min<size_t>(blocks.size() - next, BlocksPerChunk());
      std::vector<float> values;
      absl::Status read = mlaserve::ReadBlocks(*ops_, cache_->pool(), absl::MakeConstSpan(blocks).subspan(next, count), &values);
      if (!read.ok()) return ToGrpcStatus(read);
      chunk.set_values(values.data(), values.size() * sizeof(float));
      next += count;
    }
    if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "reader went away");
    if (transfer_chunk_delay_ > absl::ZeroDuration()) absl::SleepFor(transfer_chunk_delay_);
  }
  return grpc::Status::OK;
}

grpc::Status WorkerService::PullBlocks(grpc::ServerContext*, const internal::v1::PullBlocksRequest* request,
                                       internal::v1::PullBlocksResponse* response) {
  int64_t bytes = 0;
  absl::Status status = Pull(*request, &bytes);
  response->set_bytes(bytes);
  return ToGrpcStatus(status);
}

absl::Status WorkerService::Pull(const internal::v1::PullBlocksRequest& request, int64_t* bytes) {
  if (request.source_blocks_size() != request.dest_blocks_size()) {
    return absl::InvalidArgumentError(absl::StrCat(request.source_blocks_size(), " source blocks for ",
                                                   request.dest_blocks_size(), " destination blocks"));
  }
  int64_t per_block = 0;
  {
    absl::MutexLock lock(&mu_);
    if (!cache_.has_value()) return absl::FailedPreconditionError("PullBlocks before LoadShard");
    per_block = ValuesPerBlock(cache_->pool());
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto stub = internal::v1::Worker::NewStub(
      grpc::CreateCustomChannel(request.source_address(), grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(std::max(1.0, request.timeout_s()))));
  internal::v1::ReadBlocksRequest read;
  *read.mutable_blocks() = request.source_blocks();
  std::unique_ptr<grpc::ClientReader<internal::v1::BlockChunk>> reader = stub->ReadBlocks(&context, read);
  const std::vector<int32_t> dest(request.dest_blocks().begin(), request.dest_blocks().end());
  size_t next = 0;
  internal::v1::BlockChunk chunk;
  while (reader->Read(&chunk)) {
    const size_t values = chunk.values().size() / sizeof(float);
    const size_t count = values / per_block;
    if (values % per_block != 0 || next + count > dest.size()) {
      context.TryCancel();
      return absl::DataLossError(absl::StrCat("KV transfer from ", request.source_address(), ": a chunk of ", values,
                                              " values does not fit the remaining blocks"));
    }
    std::vector<float> host(values);
    std::memcpy(host.data(), chunk.values().data(), values * sizeof(float));
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(WriteBlocks(*ops_, cache_->pool(), absl::MakeConstSpan(dest).subspan(next, count), host));
    next += count;
    *bytes += static_cast<int64_t>(chunk.values().size());
  }
  absl::Status status = FromGrpcStatus(reader->Finish());
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("KV transfer from ", request.source_address(), " failed after ", next,
                                               " of ", dest.size(), " blocks: ", status.ToString()));
  }
  if (next != dest.size()) {
    return absl::DataLossError(absl::StrCat("KV transfer from ", request.source_address(), " ended after ", next,
                                            " of ", dest.size(), " blocks"));
  }
  return absl::OkStatus();
}

grpc::Status WorkerService::SendBlocks(grpc::ServerContext*, const internal::v1::LinkBlocksRequest* request,
                                       internal::v1::LinkBlocksResponse* response) {
  int64_t bytes = 0;
  absl::Status status = OverLink(*request, /*send=*/true, &bytes);
  response->set_bytes(bytes);
  return ToGrpcStatus(status);
}

grpc::Status WorkerService::RecvBlocks(grpc::ServerContext*, const internal::v1::LinkBlocksRequest* request,
                                       internal::v1::LinkBlocksResponse* response) {
  int64_t bytes = 0;
  absl::Status status = OverLink(*request, /*send=*/false, &bytes);
  response->set_bytes(bytes);
  return ToGrpcStatus(status);
}

absl::Status WorkerService::OverLink(const internal::v1::LinkBlocksRequest& request, bool send, int64_t* bytes) {
  Tensor pool;
  {
    absl::MutexLock lock(&mu_);
    if (!cache_.has_value()) return absl::FailedPreconditionError("KV transfer before LoadShard");
    pool = cache_->pool();  // shares the memory; blocks in flight are reserved by the coordinator
  }
  const absl::Duration timeout = absl::Seconds(std::max(1.0, request.timeout_s()));
  ASSIGN_OR_RETURN(Communicator * link, links_.Get(request.link(), send ? 0 : 1, timeout));
  const std::vector<int32_t> blocks(request.blocks().begin(), request.blocks().end());
  absl::Status status = send ? mlaserve::SendBlocks(*link, pool, blocks, 1) : mlaserve::RecvBlocks(*link, pool, blocks, 0);
  if (!status.ok()) {
    links_.Drop(request.link());
    return status;
  }
  *bytes = static_cast<int64_t>(blocks.size()) * ValuesPerBlock(pool) * static_cast<int64_t>(DTypeBytes(pool.dtype));
  return absl::OkStatus();
}

}  // namespace mlaserve
