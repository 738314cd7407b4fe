#include "worker/worker_service.h"

#include <algorithm>
#include <cstring>
#include <iostream>

#include <grpcpp/grpcpp.h>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "kernels/sampler.h"
#include "worker/block_io.h"
#include "worker/kv_shards.h"
#include "worker/load_report.h"
#include "worker/memory_profile.h"

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
                             WorkerOptions options)
    : ops_(std::move(ops)),
      store_(store),
      factory_(std::move(factory)),
      options_(std::move(options)),
      links_(store, factory_),
      start_free_bytes_(options_.gpu_memory ? options_.gpu_memory->free_bytes() : absl::StatusOr<int64_t>(0)) {}

grpc::Status WorkerService::LoadShard(grpc::ServerContext* context, const internal::v1::LoadShardRequest* request,
                                      internal::v1::LoadShardResponse* response) {
  if (grpc::Status denied = CheckCaller(options_.cluster_secret, *context); !denied.ok()) return denied;
  absl::MutexLock lock(&mu_);
  return ToGrpcStatus(Load(*request, response));
}

absl::Status WorkerService::Load(const internal::v1::LoadShardRequest& request,
                                 internal::v1::LoadShardResponse* response) {
  // What can be checked is, before anything changes: a bad request leaves
  // the worker serving what it had.
  if (request.block_size() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("block_size ", request.block_size(), " is not positive"));
  }
  const ParallelPlan plan{.tp = std::max(1, request.tp()),
                          .dp_attention = std::max(1, request.dp_attention()),
                          .ep = std::max(1, request.ep())};
  if (request.group_size() != plan.group_size()) {
    return absl::InvalidArgumentError(absl::StrCat("group_size ", request.group_size(), " does not match the plan ",
                                                   plan.ToString()));
  }
  if (request.group_rank() < 0 || request.group_rank() >= plan.group_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("group_rank ", request.group_rank(), " outside a group of ", plan.group_size()));
  }
  ASSIGN_OR_RETURN(const WeightsDtype dtype, ParseWeightsDtype(request.weights_dtype()));
  ASSIGN_OR_RETURN(const KvCacheDtype kv_dtype, ParseKvCacheDtype(request.kv_cache_dtype()));
  absl::StatusOr<ModelConfig> config = LoadModelConfig(request.model_dir() + "/config.json");
  if (!config.ok()) return absl::InvalidArgumentError(absl::StrCat("model_dir: ", config.status().message()));
  // A group formed again (after a peer failed, or by a restarted
  // coordinator) that places this rank as before keeps its weights: reading
  // them again would take minutes at real sizes. Everything else goes.
  std::unique_ptr<Model> kept;
  const ShardIdentity shard{.model_dir = request.model_dir(),
                            .plan = plan,
                            .group_rank = request.group_rank(),
                            .dtype = dtype,
                            .random_weights = request.random_weights(),
                            .random_seed = request.random_seed()};
  if (loaded_ && loaded_shard_ == shard && model_ != nullptr) kept = std::move(model_);
  loaded_ = false;
  sequences_.clear();
  cache_.reset();
  num_blocks_ = 0;
  model_.reset();  // before its communicators
  comms_ = GroupComms();
  if (plan.group_size() > 1) {
    std::cerr << "worker: joining group " << request.rendezvous_prefix() << " as rank " << request.group_rank()
              << " of " << plan.ToString() << "\n";
    ASSIGN_OR_RETURN(comms_, ConnectGroup(store_, request.rendezvous_prefix(), plan, request.group_rank(),
                                             absl::Seconds(std::max(1.0, request.comm_timeout_s())), factory_));
  }
  comms_.plan = plan;
  comms_.group_rank = request.group_rank();
  block_size_ = request.block_size();
  kv_dtype_ = kv_dtype;
  if (options_.mock_compute) {
    vocab_size_ = config->vocab_size;
    bytes_per_block_ = KvBlockBytes(*config, block_size_, DType::kBF16, kv_dtype_);  // as a GPU's
    loaded_ = true;
    response->set_bytes_per_block(bytes_per_block_);
    return absl::OkStatus();
  }
  int64_t free_before_weights = 0;
  if (options_.gpu_memory) {
    RETURN_IF_ERROR(start_free_bytes_.status());
    ASSIGN_OR_RETURN(free_before_weights, options_.gpu_memory->free_bytes());
  }
  std::unique_ptr<Model> model;
  if (kept != nullptr) {
    std::cerr << "worker: keeping the weights it holds for rank " << request.group_rank() << " of "
              << plan.ToString() << "\n";
    ASSIGN_OR_RETURN(model, Model::Rejoin(std::move(kept), comms_.shard()));
    free_before_weights += weight_bytes_;  // as if they were loaded now
  } else if (request.random_weights()) {
    ASSIGN_OR_RETURN(model,
                     Model::LoadRandom(request.model_dir(), *ops_, comms_.shard(), request.random_seed(), dtype));
  } else {
    ASSIGN_OR_RETURN(model, Model::Load(request.model_dir(), *ops_, comms_.shard(), dtype, LoadReporter("worker")));
  }
  if (options_.gpu_memory) {
    RETURN_IF_ERROR(MeasureMemory(*model, request, free_before_weights, response->mutable_memory()));
  }
  model_ = std::move(model);
  loaded_shard_ = shard;
  weight_bytes_ = response->memory().weight_bytes();
  vocab_size_ = model_->config().vocab_size;
  bytes_per_block_ = KvBlockBytes(model_->config(), block_size_, ops_->storage_dtype(), kv_dtype_);
  loaded_ = true;
  response->set_bytes_per_block(bytes_per_block_);
  return absl::OkStatus();
}

absl::Status WorkerService::MeasureMemory(Model& model, const internal::v1::LoadShardRequest& request,
                                          int64_t free_before_weights, internal::v1::MemoryReport* report) {
  const GpuMemory& gpu = *options_.gpu_memory;
  RETURN_IF_ERROR(gpu.release_cached());  // what loading freed
  ASSIGN_OR_RETURN(const int64_t free_after_weights, gpu.free_bytes());
  int64_t scratch_bytes = 0;
  const StepShape step{.max_tokens = request.max_step_tokens(), .max_sequences = request.max_step_sequences()};
  if (step.max_tokens > 0 && step.max_sequences > 0) {
    ASSIGN_OR_RETURN(scratch_bytes, RunLargestStep(model, *ops_, block_size_, kv_dtype_, step));
  }
  ASSIGN_OR_RETURN(const int64_t free_after_step, gpu.free_bytes());
  RETURN_IF_ERROR(gpu.release_cached());
  ASSIGN_OR_RETURN(const int64_t free_now, gpu.free_bytes());
  // A long context's expanded attention takes more scratch than the largest
  // step of short ones did, up to the model's bound: reserved on top.
  const int64_t activations =
      std::max<int64_t>(0, free_after_weights - free_after_step - scratch_bytes) + model.expanded_scratch_bytes();
  report->set_capacity_bytes(gpu.capacity_bytes);
  report->set_free_bytes(free_now - activations);
  report->set_used_bytes(*start_free_bytes_ - free_after_weights + activations);
  report->set_weight_bytes(free_before_weights - free_after_weights);
  report->set_activation_bytes(activations);
  constexpr double kGiB = 1 << 30;
  std::cerr << absl::StreamFormat(
      "worker: memory after loading: %.2f GiB weights, %.2f GiB for the largest step (%d tokens, %d sequences) "
      "and long contexts' expanded attention, "
      "%.2f GiB held in all of %.2f GiB; %.2f GiB free for the KV cache on the GPU\n",
      report->weight_bytes() / kGiB, activations / kGiB, step.max_tokens, step.max_sequences,
      report->used_bytes() / kGiB, report->capacity_bytes() / kGiB, report->free_bytes() / kGiB);
  return absl::OkStatus();
}

grpc::Status WorkerService::CreateCache(grpc::ServerContext* context, const internal::v1::CreateCacheRequest* request,
                                        internal::v1::CreateCacheResponse* response) {
  if (grpc::Status denied = CheckCaller(options_.cluster_secret, *context); !denied.ok()) return denied;
  absl::MutexLock lock(&mu_);
  return ToGrpcStatus(CreatePool(*request, response));
}

absl::Status WorkerService::CreatePool(const internal::v1::CreateCacheRequest& request,
                                       internal::v1::CreateCacheResponse* response) {
  if (!loaded_) return absl::FailedPreconditionError("CreateCache before LoadShard");
  // A new pool holds none of the old one's KV.
  sequences_.clear();
  cache_.reset();
  num_blocks_ = 0;
  decode_context_parallel_ = false;
  if (request.num_blocks() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("a KV cache of ", request.num_blocks(), " blocks"));
  }
  if (request.decode_context_parallel() && (comms_.plan.tp < 2 || !ops_->AttendsInParts())) {
    return absl::InvalidArgumentError(absl::StrCat("decode_context_parallel needs tp > 1 (it spreads KV over head "
                                                   "shards) and a backend that attends in parts; this is tp ",
                                                   comms_.plan.tp, " on ", std::string(ops_->name())));
  }
  if (!options_.mock_compute) {
    RETURN_IF_ERROR(model_->set_decode_context_parallel(request.decode_context_parallel()));
    ASSIGN_OR_RETURN(KvCache cache,
                     KvCache::Create(*ops_, model_->config(), request.num_blocks(), block_size_, kv_dtype_));
    cache_.emplace(std::move(cache));
  }
  num_blocks_ = request.num_blocks();
  decode_context_parallel_ = request.decode_context_parallel();
  response->set_num_blocks(num_blocks_);
  response->set_bytes_per_block(bytes_per_block_);
  return absl::OkStatus();
}

grpc::Status WorkerService::Steps(
    grpc::ServerContext* context, grpc::ServerReaderWriter<internal::v1::StepResponse, internal::v1::StepRequest>* stream) {
  if (grpc::Status denied = CheckCaller(options_.cluster_secret, *context); !denied.ok()) return denied;
  internal::v1::StepRequest request;
  while (stream->Read(&request)) {
    internal::v1::StepResponse response;
    // A failed step ends the stream: the coordinator fails the group.
    if (absl::Status status = Step(request, &response); !status.ok()) return ToGrpcStatus(status);
    if (!stream->Write(response)) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "coordinator went away");
  }
  return grpc::Status::OK;
}

int WorkerService::KvShards() const { return decode_context_parallel_ ? comms_.plan.tp : 1; }

absl::StatusOr<std::vector<int32_t>> WorkerService::PoolBlocks(absl::Span<const int32_t> blocks) const {
  const int shards = KvShards(), shard = comms_.group_rank % comms_.plan.tp;
  std::vector<int32_t> pool;
  pool.reserve(blocks.size());
  for (int32_t block : blocks) {
    if (shards == 1 || block < 0) {
      pool.push_back(block);  // out-of-range ids are refused where the pool is read or written
      continue;
    }
    pool.push_back(HeldBlock(block, shards, shard));
    if (pool.back() == kBlockElsewhere) {
      return absl::FailedPreconditionError(absl::StrCat("block ", block, " is held by head shard ", block % shards,
                                                        ", not this rank (decode context parallelism)"));
    }
  }
  return pool;
}

absl::Status WorkerService::Step(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) {
  absl::MutexLock lock(&mu_);
  return RunStep(request, response);
}

absl::Status WorkerService::CheckChange(const internal::v1::StepSequence& s,
                                       const absl::flat_hash_set<int64_t>& released) const {
  const std::string who = absl::StrCat("request ", s.request_id(), ": ");
  const SequenceState fresh;
  const SequenceState* state = &fresh;
  if (!s.start()) {
    auto it = sequences_.find(s.request_id());
    if (it == sequences_.end() || released.contains(s.request_id())) {
      return absl::InvalidArgumentError(absl::StrCat(who, "unknown sequence"));
    }
    state = &it->second;
  }
  const int64_t blocks_named = num_blocks_ * KvShards();
  for (int32_t block : s.new_blocks()) {
    if (block < 0 || block >= blocks_named) {
      return absl::InvalidArgumentError(absl::StrCat(who, "block ", block, " outside [0, ", blocks_named, ")"));
    }
  }
  if (s.sampled_input()) {
    if (s.token_ids_size() != 0 || state->last_sample < 0) {
      return absl::InvalidArgumentError(absl::StrCat(who, "sampled input without a sample before it"));
    }
  } else {
    if (s.token_ids_size() == 0) return absl::InvalidArgumentError(absl::StrCat(who, "no tokens"));
    for (int32_t id : s.token_ids()) {
      if (id < 0 || id >= vocab_size_) {
        return absl::InvalidArgumentError(absl::StrCat(who, "token id ", id, " outside [0, ", vocab_size_, ")"));
      }
    }
  }
  const int64_t new_tokens = s.sampled_input() ? 1 : s.token_ids_size();
  // A start may follow a prefix the cache already holds.
  const int64_t cached = s.start() ? std::max<int64_t>(0, s.context_len() - new_tokens) : state->context_len;
  if (s.context_len() != cached + new_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(who, "context_len ", s.context_len(), " but the worker has ",
                                                   cached, " tokens and ", new_tokens, " new"));
  }
  const int64_t blocks = static_cast<int64_t>(state->block_table.size()) + s.new_blocks_size();
  if (s.context_len() > blocks * block_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, "context of ", s.context_len(), " tokens beyond its ", blocks, " blocks"));
  }
  return absl::OkStatus();
}

absl::Status WorkerService::CheckChunks(const internal::v1::StepRequest& request,
                                        absl::flat_hash_map<int64_t, int>* chunks) const {
  const int replicas = comms_.plan.dp_attention;
  if (decode_context_parallel_ && request.context_parallel_size() > 0) {
    return absl::InvalidArgumentError("context-parallel chunks need each replica's blocks whole on its ranks, which "
                                      "decode context parallelism spreads");
  }
  absl::flat_hash_map<int64_t, const internal::v1::StepSequence*> by_id;
  for (const internal::v1::StepSequence& s : request.sequences()) by_id[s.request_id()] = &s;
  for (int c = 0; c < request.context_parallel_size(); ++c) {
    const internal::v1::ContextParallelChunk& chunk = request.context_parallel(c);
    const std::string who = absl::StrCat("context-parallel chunk of request ", chunk.request_id(), ": ");
    const int pieces = chunk.replicas_size();
    if (chunk.request_id() <= 0 || replicas == 1 || pieces < replicas || chunk.slice_tokens_size() != pieces) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, "needs a request id and slices in each of the group's ", replicas, " replicas, one size per slice"));
    }
    std::vector<bool> owns(replicas, false);
    int64_t tokens = 0;
    for (int j = 0; j < pieces; ++j) {
      const int r = chunk.replicas(j);
      if (r < 0 || r >= replicas || chunk.slice_tokens(j) < 1) {
        return absl::InvalidArgumentError(absl::StrCat(who, "slices must be non-empty, in the group's replicas"));
      }
      owns[r] = true;
      tokens += chunk.slice_tokens(j);
    }
    const int home = chunk.replicas(pieces - 1);
    for (int r = 0; r < replicas; ++r) {
      const int64_t id = r == home ? chunk.request_id() : -chunk.request_id();
      auto it = by_id.find(id);
      if (!owns[r] || it == by_id.end() || it->second->replica() != r) {
        return absl::InvalidArgumentError(absl::StrCat(who, "no slice or no sequence ", id, " in replica ", r));
      }
      if (!chunks->emplace(id, c).second) {
        return absl::InvalidArgumentError(absl::StrCat(who, "sequence ", id, " in two chunks"));
      }
      if (it->second->sampled_input() || (r != home && it->second->sample())) {
        return absl::InvalidArgumentError(
            absl::StrCat(who, "sequence ", id, " may not ", r == home ? "take a sampled input" : "sample"));
      }
      if (it->second->token_ids_size() != tokens) {
        return absl::InvalidArgumentError(
            absl::StrCat(who, "sequence ", id, " carries ", it->second->token_ids_size(), " tokens, the slices ", tokens));
      }
    }
  }
  return absl::OkStatus();
}

WorkerService::StepRow WorkerService::ApplyChange(const internal::v1::StepSequence& s,
                                                  const internal::v1::ContextParallelChunk* chunk,
                                                  ContextSplit* split, ForwardBatch* batch) {
  SequenceState* state;
  if (s.start()) {
    state = &sequences_[s.request_id()];
    *state = SequenceState();
    state->sampling = {.temperature = s.sampling().temperature(), .top_k = s.sampling().top_k(),
                       .top_p = s.sampling().top_p(), .seed = s.sampling().seed()};
    state->logprobs = s.logprobs();
    state->top_logprobs = std::max(0, s.top_logprobs());
  } else {
    state = &sequences_.find(s.request_id())->second;
  }
  state->block_table.insert(state->block_table.end(), s.new_blocks().begin(), s.new_blocks().end());
  const int64_t new_tokens = s.sampled_input() ? 1 : s.token_ids_size();
  const int64_t chunk_begin = s.context_len() - new_tokens;
  state->context_len = s.context_len();
  // The tokens [begin, end) of the change, as one slice of the batch.
  auto add_slice = [&](int64_t begin, int64_t end) {
    SequenceSlice slice;
    slice.token_begin = static_cast<int64_t>(batch->token_ids.size());
    if (s.sampled_input()) {
      batch->token_ids.push_back(state->last_sample);
    } else {
      batch->token_ids.insert(batch->token_ids.end(), s.token_ids().begin() + begin, s.token_ids().begin() + end);
    }
    slice.num_tokens = end - begin;
    slice.context_len = chunk_begin + end;
    slice.block_table = decode_context_parallel_
                            ? HeldBlockTable(state->block_table, comms_.plan.tp, comms_.group_rank % comms_.plan.tp)
                            : state->block_table;
    batch->layout.seqs.push_back(std::move(slice));
  };
  if (chunk == nullptr) {
    add_slice(0, new_tokens);
  } else {
    // This replica's pieces of the chunk (the home replica's last one ends it).
    int64_t offset = 0;
    for (int j = 0; j < chunk->replicas_size(); ++j) {
      split->owners.push_back(chunk->replicas(j));
      split->piece_tokens.push_back(chunk->slice_tokens(j));
      if (chunk->replicas(j) == s.replica()) {
        split->seqs.push_back(static_cast<int64_t>(batch->layout.seqs.size()));
        add_slice(offset, offset + chunk->slice_tokens(j));
      }
      offset += chunk->slice_tokens(j);
    }
  }
  if (s.sample()) batch->logit_rows.push_back(static_cast<int64_t>(batch->token_ids.size()) - 1);
  return StepRow{state, s.sample(), s.sample_index()};
}

absl::Status WorkerService::RunStep(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) {
  if (num_blocks_ == 0) return absl::FailedPreconditionError("Step before LoadShard and CreateCache");
  response->set_step_id(request.step_id());
  // This rank computes its attention replica's sequences; every rank of the
  // replica samples them (the logits are gathered on each), the first reports.
  const int replica = comms_.group_rank / comms_.plan.tp;
  const bool report = comms_.group_rank % comms_.plan.tp == 0;
  // The whole step is checked before any of it is applied: a refused step
  // leaves every sequence as it was.
  const absl::flat_hash_set<int64_t> released(request.released().begin(), request.released().end());
  absl::flat_hash_set<int64_t> seen;
  for (const internal::v1::StepSequence& s : request.sequences()) {
    if (s.replica() < 0 || s.replica() >= comms_.plan.dp_attention) {
      return absl::InvalidArgumentError(absl::StrCat("request ", s.request_id(), ": replica ", s.replica(),
                                                     " outside the group's ", comms_.plan.dp_attention));
    }
    if (!seen.insert(s.request_id()).second) {
      return absl::InvalidArgumentError(absl::StrCat("request ", s.request_id(), " twice in one step"));
    }
    if (s.replica() == replica) RETURN_IF_ERROR(CheckChange(s, released));
  }
  absl::flat_hash_map<int64_t, int> chunks;
  RETURN_IF_ERROR(CheckChunks(request, &chunks));
  for (int64_t id : request.released()) sequences_.erase(id);
  ForwardBatch batch;
  batch.layout.block_size = block_size_;
  // In the request's order: every replica takes the chunks' collectives in it.
  batch.context_splits.resize(request.context_parallel_size());
  std::vector<StepRow> rows;
  std::vector<int64_t> ids;
  for (const internal::v1::StepSequence& s : request.sequences()) {
    if (s.replica() != replica) continue;
    auto chunk = chunks.find(s.request_id());
    if (chunk == chunks.end()) {
      rows.push_back(ApplyChange(s, nullptr, nullptr, &batch));
    } else {
      rows.push_back(ApplyChange(s, &request.context_parallel(chunk->second),
                                 &batch.context_splits[chunk->second], &batch));
    }
    ids.push_back(s.request_id());
  }
  // A step that only releases sequences computes nothing. (With attention
  // replicas, a replica without sequences still joins the experts' exchange.)
  if (batch.token_ids.empty() && comms_.plan.dp_attention == 1) {
    ++steps_;
    return absl::OkStatus();
  }
  if (options_.mock_compute) {
    absl::SleepFor(options_.mock_step_time);
    MockSampleRows(ids, rows, report, response);
  } else {
    ASSIGN_OR_RETURN(const Tensor logits, model_->ForwardLogits(batch, *cache_, options_.attention_form));
    RETURN_IF_ERROR(SampleRows(rows, logits, report, response));
  }
  ++steps_;
  tokens_processed_ += static_cast<int64_t>(batch.token_ids.size());
  return absl::OkStatus();
}

absl::Status WorkerService::SampleRows(const std::vector<StepRow>& rows, const Tensor& logits, bool report,
                                       internal::v1::StepResponse* response) {
  std::vector<SequenceState*> sampling;
  std::vector<SamplerParams> params;
  std::vector<int64_t> draw_indices;
  bool logprobs = false;
  for (const StepRow& row : rows) {
    if (!row.sample) continue;
    sampling.push_back(row.state);
    params.push_back(row.state->sampling);
    draw_indices.push_back(row.sample_index);
    logprobs = logprobs || row.state->logprobs;
  }
  const int64_t vocab = vocab_size_;
  std::vector<int32_t> tokens(sampling.size());
  RETURN_IF_ERROR(ops_->SampleTokens(logits, vocab, params, draw_indices, absl::MakeSpan(tokens)));
  for (size_t i = 0; i < sampling.size(); ++i) sampling[i]->last_sample = tokens[i];
  if (!report) return absl::OkStatus();
  std::vector<float> host_logits;
  if (logprobs) {
    ASSIGN_OR_RETURN(host_logits, model_->LogitsToHost(logits));
  }
  for (size_t i = 0; i < sampling.size(); ++i) {
    response->add_sampled_token_ids(tokens[i]);
    internal::v1::TokenLogprobs* out = response->add_logprobs();
    if (!sampling[i]->logprobs) continue;
    FillLogprobs(absl::MakeConstSpan(host_logits).subspan(i * vocab, vocab), tokens[i], sampling[i]->top_logprobs,
                 out);
  }
  return absl::OkStatus();
}

void WorkerService::MockSampleRows(const std::vector<int64_t>& ids, const std::vector<StepRow>& rows, bool report,
                                   internal::v1::StepResponse* response) {
  for (size_t i = 0; i < rows.size(); ++i) {
    if (!rows[i].sample) continue;
    // Any function of the request and position will do; a prime stride keeps
    // neighbours apart.
    const int32_t token = static_cast<int32_t>((ids[i] * 7919 + rows[i].sample_index) % vocab_size_);
    rows[i].state->last_sample = token;
    if (!report) continue;
    response->add_sampled_token_ids(token);
    response->add_logprobs();
  }
}

grpc::Status WorkerService::GetStats(grpc::ServerContext* context, const internal::v1::GetStatsRequest*,
                                     internal::v1::GetStatsResponse* response) {
  if (grpc::Status denied = CheckCaller(options_.cluster_secret, *context); !denied.ok()) return denied;
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
  const int64_t bytes = ValuesPerBlock(cache_->pool()) * static_cast<int64_t>(DTypeBytes(cache_->pool().dtype));
  return std::max<int64_t>(1, (int64_t{4} << 20) / bytes);
}

grpc::Status WorkerService::ReadBlocks(grpc::ServerContext* context, const internal::v1::ReadBlocksRequest* request,
                                       grpc::ServerWriter<internal::v1::BlockChunk>* writer) {
  if (grpc::Status denied = CheckCaller(options_.cluster_secret, *context); !denied.ok()) return denied;
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
      absl::StatusOr<std::vector<int32_t>> pool_blocks = PoolBlocks(absl::MakeConstSpan(blocks).subspan(next, count));
      if (!pool_blocks.ok()) return ToGrpcStatus(pool_blocks.status());
      std::vector<float> values;
      absl::Status read = mlaserve::ReadBlocks(*ops_, cache_->pool(), *pool_blocks, &values);
      if (!read.ok()) return ToGrpcStatus(read);
      chunk.set_values(EncodeBlockValues(values, cache_->pool().dtype));
      chunk.set_dtype(std::string(DTypeName(cache_->pool().dtype)));
      next += count;
    }
    if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "reader went away");
    if (options_.transfer_chunk_delay > absl::ZeroDuration()) absl::SleepFor(options_.transfer_chunk_delay);
  }
  return grpc::Status::OK;
}

grpc::Status WorkerService::PullBlocks(grpc::ServerContext* context, const internal::v1::PullBlocksRequest* request,
                                       internal::v1::PullBlocksResponse* response) {
  if (grpc::Status denied = CheckCaller(options_.cluster_secret, *context); !denied.ok()) return denied;
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
  DType pool_dtype = DType::kF32;
  std::vector<int32_t> dest;
  {
    absl::MutexLock lock(&mu_);
    if (!cache_.has_value()) return absl::FailedPreconditionError("PullBlocks before LoadShard");
    per_block = ValuesPerBlock(cache_->pool());
    pool_dtype = cache_->pool().dtype;
    ASSIGN_OR_RETURN(dest, PoolBlocks(request.dest_blocks()));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto stub = internal::v1::Worker::NewStub(
      AuthorizedChannel(request.source_address(), options_.cluster_secret.presented(), args));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(std::max(1.0, request.timeout_s()))));
  internal::v1::ReadBlocksRequest read;
  *read.mutable_blocks() = request.source_blocks();
  std::unique_ptr<grpc::ClientReader<internal::v1::BlockChunk>> reader = stub->ReadBlocks(&context, read);
  size_t next = 0;
  internal::v1::BlockChunk chunk;
  while (reader->Read(&chunk)) {
    absl::StatusOr<std::vector<float>> host = DecodeBlockValues(chunk.values(), chunk.dtype(), pool_dtype);
    if (!host.ok()) {
      context.TryCancel();
      return absl::DataLossError(absl::StrCat("KV transfer from ", request.source_address(), ": ",
                                              host.status().message()));
    }
    const size_t values = host->size();
    const size_t count = values / per_block;
    if (values % per_block != 0 || next + count > dest.size()) {
      context.TryCancel();
      return absl::DataLossError(absl::StrCat("KV transfer from ", request.source_address(), ": a chunk of ", values,
                                              " values does not fit the remaining blocks"));
    }
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(WriteBlocks(*ops_, cache_->pool(), absl::MakeConstSpan(dest).subspan(next, count), *host));
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

grpc::Status WorkerService::SendBlocks(grpc::ServerContext* context, const internal::v1::LinkBlocksRequest* request,
                                       internal::v1::LinkBlocksResponse* response) {
  if (grpc::Status denied = CheckCaller(options_.cluster_secret, *context); !denied.ok()) return denied;
  int64_t bytes = 0;
  absl::Status status = OverLink(*request, /*send=*/true, &bytes);
  response->set_bytes(bytes);
  return ToGrpcStatus(status);
}

grpc::Status WorkerService::RecvBlocks(grpc::ServerContext* context, const internal::v1::LinkBlocksRequest* request,
                                       internal::v1::LinkBlocksResponse* response) {
  if (grpc::Status denied = CheckCaller(options_.cluster_secret, *context); !denied.ok()) return denied;
  int64_t bytes = 0;
  absl::Status status = OverLink(*request, /*send=*/false, &bytes);
  response->set_bytes(bytes);
  return ToGrpcStatus(status);
}

absl::Status WorkerService::OverLink(const internal::v1::LinkBlocksRequest& request, bool send, int64_t* bytes) {
  Tensor pool;
  std::vector<int32_t> blocks;
  {
    absl::MutexLock lock(&mu_);
    if (!cache_.has_value()) return absl::FailedPreconditionError("KV transfer before LoadShard");
    pool = cache_->pool();  // shares the memory; blocks in flight are reserved by the coordinator
    ASSIGN_OR_RETURN(blocks, PoolBlocks(request.blocks()));
  }
  const absl::Duration timeout = absl::Seconds(std::max(1.0, request.timeout_s()));
  ASSIGN_OR_RETURN(Communicator * link, links_.Get(request.link(), send ? 0 : 1, timeout));
  if (send && !blocks.empty() && options_.transfer_chunk_delay > absl::ZeroDuration()) {
    absl::SleepFor(options_.transfer_chunk_delay);
  }
  absl::Status status = send ? mlaserve::SendBlocks(*link, pool, blocks, 1) : mlaserve::RecvBlocks(*link, pool, blocks, 0);
  if (!status.ok()) {
    links_.Drop(request.link());
    return status;
  }
  *bytes = static_cast<int64_t>(blocks.size()) * ValuesPerBlock(pool) * static_cast<int64_t>(DTypeBytes(pool.dtype));
  return absl::OkStatus();
}

}  // namespace mlaserve
