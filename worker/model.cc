#include "worker/model.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "kernels/sampler.h"

namespace mlaserve {

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir, Ops& ops, const LoadProgress& progress) {
  return Load(dir, ops, ModelShard{}, WeightsDtype::kAuto, progress);
}

namespace {

uint64_t NextModelId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1);
}

absl::Status CheckCommunicator(const Communicator* comm, int size, const char* which) {
  if (size == 1) return absl::OkStatus();
  if (comm == nullptr || comm->size() != size) {
    return absl::InvalidArgumentError(absl::StrCat("the plan needs a communicator over ", size, " ranks (", which,
                                                   "), got ", comm == nullptr ? 0 : comm->size()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir, Ops& ops, const ModelShard& shard,
                                                   WeightsDtype dtype, const LoadProgress& progress) {
  return Create(dir, ops, shard, [&](const ModelConfig& config, const ShardLayout& layout) -> absl::StatusOr<ModelWeights> {
    ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
    if (config.fp8_block_rows > 0) checkpoint->set_fp8_block(config.fp8_block_rows, config.fp8_block_cols);
    return LoadModelWeights(*checkpoint, config, layout, ops, dtype, progress);
  });
}

absl::StatusOr<std::unique_ptr<Model>> Model::LoadRandom(const std::string& dir, Ops& ops, const ModelShard& shard,
                                                         uint64_t seed, WeightsDtype dtype) {
  return Create(dir, ops, shard, [&](const ModelConfig& config, const ShardLayout& layout) {
    return RandomModelWeights(config, layout, ops, seed, dtype);
  });
}

absl::StatusOr<std::unique_ptr<Model>> Model::Create(const std::string& dir, Ops& ops, const ModelShard& shard,
                                                     const WeightSource& weights_from) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir + "/config.json"));
  ASSIGN_OR_RETURN(ShardLayout layout, MakeShardLayout(config, shard.plan, shard.group_rank));
  RETURN_IF_ERROR(CheckCommunicator(shard.group, shard.plan.group_size(), "the engine group"));
  RETURN_IF_ERROR(CheckCommunicator(shard.attention, shard.plan.tp, "the attention replica"));
  ASSIGN_OR_RETURN(ModelWeights weights, weights_from(config, layout));
  ASSIGN_OR_RETURN(RopeTable rope, MakeRopeTable(config));
  return std::unique_ptr<Model>(new Model(config, std::move(weights), std::move(rope), ops, layout, shard));
}

absl::StatusOr<std::unique_ptr<Model>> Model::Rejoin(std::unique_ptr<Model> model, const ModelShard& shard) {
  if (shard.plan != model->shard_.plan || shard.group_rank != model->shard_.group_rank) {
    return absl::FailedPreconditionError(absl::StrCat("rank ", shard.group_rank, " of ", shard.plan.ToString(),
                                                      " holds other weights than rank ", model->shard_.group_rank,
                                                      " of ", model->shard_.plan.ToString()));
  }
  RETURN_IF_ERROR(CheckCommunicator(shard.group, shard.plan.group_size(), "the engine group"));
  RETURN_IF_ERROR(CheckCommunicator(shard.attention, shard.plan.tp, "the attention replica"));
  return std::unique_ptr<Model>(new Model(model->config_, std::move(model->weights_), std::move(model->rope_),
                                          model->ops_, model->layout_, shard));
}

Model::Model(const ModelConfig& config, ModelWeights weights, RopeTable rope, Ops& ops, const ShardLayout& layout,
             const ModelShard& shard)
    : config_(config),
      weights_(std::move(weights)),
      rope_(std::move(rope)),
      softmax_scale_(MlaSoftmaxScale(config)),
      ops_(ops),
      layout_(layout),
      shard_(shard),
      id_(NextModelId()) {
  if (shard.plan.group_size() > 1 && config.n_routed_experts > 0) {
    dispatch_.emplace(layout, config.n_routed_experts, ops, *shard.group);
  }
}

absl::Status Model::set_decode_context_parallel(bool on) {
  if (on && shard_.attention == nullptr) {
    return absl::InvalidArgumentError("decode context parallelism spreads KV over head shards: it needs tp > 1");
  }
  decode_context_parallel_ = on;
  return absl::OkStatus();
}

absl::Status Model::SumOverHeads(Tensor* partial) {
  if (shard_.plan.tp == 1) return absl::OkStatus();
  RETURN_IF_ERROR(ReadyForCollective(ops_, *shard_.attention));
  return shard_.attention->AllReduceSum(partial->data, partial->numel(), partial->dtype);
}

absl::StatusOr<Tensor> Model::LinearOf(const Tensor& x, const Tensor& w) {
  ASSIGN_OR_RETURN(Tensor out, ops_.Empty(ops_.storage_dtype(), {x.dim(0), w.dim(0)}));
  RETURN_IF_ERROR(ops_.Linear(x, w, &out));
  return out;
}

absl::StatusOr<std::vector<float>> Model::Forward(const ForwardBatch& batch, KvCache& cache, AttentionForm form) {
  ASSIGN_OR_RETURN(Tensor logits, ForwardLogits(batch, cache, form));
  return LogitsToHost(logits);
}

absl::StatusOr<std::vector<float>> Model::LogitsToHost(const Tensor& logits) {
  std::vector<float> sharded(logits.numel());
  RETURN_IF_ERROR(ops_.Download(logits, absl::MakeSpan(sharded)));
  return UnshardLogits(sharded, logits.dim(0), logits.dim(1), logits.dim(2), config_.vocab_size);
}

absl::StatusOr<Tensor> Model::ForwardLogits(const ForwardBatch& batch, KvCache& cache, AttentionForm form) {
  const int64_t num_tokens = static_cast<int64_t>(batch.token_ids.size());
  if (num_tokens == 0 && batch.layout.seqs.empty() && shard_.plan.dp_attention > 1) {
    RETURN_IF_ERROR(IdleStep());
    return ops_.Empty(ops_.storage_dtype(), {shard_.plan.tp, 0, layout_.vocab_shard_rows});
  }
  if (num_tokens == 0 || batch.layout.num_tokens() != num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("batch of ", num_tokens, " tokens but its layout covers ",
                                                   batch.layout.num_tokens()));
  }
  if (batch.layout.block_size != cache.block_size()) {
    return absl::InvalidArgumentError("batch layout and cache disagree on the block size");
  }
  ASSIGN_OR_RETURN(const StepArrays step, MakeStepArrays(batch, form));
  const AttentionLayout& absorbed = step.AbsorbedLayout(batch);
  const StepInputs inputs{.token_ids = step.local_ids,
                          .positions = step.positions,
                          .slots = step.slots,
                          .logit_rows = step.logit_rows,
                          // Only the absorbed form reads the cache through the step's attention plan.
                          .layout = absorbed.seqs.empty() ? nullptr : &absorbed,
                          .latent_cache = &cache.pool(),
                          .attention_heads = static_cast<int64_t>(layout_.heads.size()),
                          .latent_rank = config_.kv_lora_rank,
                          .rope_dim = config_.qk_rope_head_dim,
                          .model_id = id_};
  RETURN_IF_ERROR(ops_.BeginStep(inputs));
  auto forward = [&]() { return RunLayers(batch, step, cache); };
  absl::StatusOr<Tensor> logits = Replayable(batch, step) ? ops_.RunStep(forward) : forward();
  ops_.EndStep();
  return logits;
}

absl::StatusOr<Model::ChunkExchange> Model::PlanExchange(const ContextSplit& split,
                                                        const AttentionLayout& layout) const {
  const int replicas = shard_.plan.dp_attention;
  if (replicas == 1 || shard_.context == nullptr || shard_.context->size() != replicas) {
    return absl::InvalidArgumentError("a context-parallel chunk needs attention replicas and their communicator");
  }
  if (split.owners.size() != split.piece_tokens.size()) {
    return absl::InvalidArgumentError("a context-parallel chunk needs an owner for each piece");
  }
  std::vector<int64_t> owned(replicas, 0);
  size_t mine = 0;
  for (size_t j = 0; j < split.owners.size(); ++j) {
    if (split.owners[j] < 0 || split.owners[j] >= replicas || split.piece_tokens[j] < 1) {
      return absl::InvalidArgumentError("a context-parallel chunk's pieces must be non-empty, owned by replicas");
    }
    owned[split.owners[j]] += split.piece_tokens[j];
    mine += split.owners[j] == layout_.replica;
  }
  if (std::count(owned.begin(), owned.end(), 0) > 0 || split.seqs.size() != mine) {
    return absl::InvalidArgumentError(absl::StrCat("a context-parallel chunk needs a piece in each of the ", replicas,
                                                   " replicas, and this rank's in the batch"));
  }
  // This rank's pieces: in the batch, of their sizes, of one sequence, at
  // their places in one chunk that fits the sequence's blocks. Their rows go
  // out in chunk order, padded to the most any replica owns with copies of
  // the last (an all-gather moves equal counts).
  ChunkExchange exchange{.width = *std::max_element(owned.begin(), owned.end())};
  int64_t offset = 0, chunk_begin = -1;
  size_t k = 0;
  for (size_t j = 0; j < split.owners.size(); offset += split.piece_tokens[j++]) {
    if (split.owners[j] != layout_.replica) continue;
    const int64_t index = split.seqs[k++];
    if (index < 0 || index >= static_cast<int64_t>(layout.seqs.size())) {
      return absl::InvalidArgumentError(absl::StrCat("context-parallel piece ", index, " not in the batch"));
    }
    const SequenceSlice& piece = layout.seqs[index];
    const int64_t begin = piece.context_len - piece.num_tokens - offset;
    if (piece.num_tokens != split.piece_tokens[j] || (chunk_begin >= 0 && begin != chunk_begin) ||
        piece.block_table != layout.seqs[split.seqs[0]].block_table) {
      return absl::InvalidArgumentError("this replica's context-parallel pieces do not match the chunk's");
    }
    chunk_begin = begin;
    for (int64_t i = 0; i < piece.num_tokens; ++i) {
      exchange.send_rows.push_back(static_cast<int32_t>(piece.token_begin + i));
    }
  }
  const std::vector<int32_t>& table = layout.seqs[split.seqs[0]].block_table;
  if (chunk_begin < 0 || chunk_begin + offset > static_cast<int64_t>(table.size()) * layout.block_size) {
    return absl::InvalidArgumentError(absl::StrCat("a context-parallel chunk ending at ", chunk_begin + offset,
                                                   " does not fit the sequence's ", table.size(), " blocks"));
  }
  exchange.send_rows.resize(exchange.width, exchange.send_rows.back());
  // The other replicas' pieces, in chunk order, and their slots in this copy.
  std::vector<int64_t> sent(replicas, 0);  // rows of each replica's part placed so far
  int64_t position = chunk_begin;
  for (size_t j = 0; j < split.owners.size(); ++j) {
    const int owner = split.owners[j];
    for (int64_t i = 0; i < split.piece_tokens[j]; ++i, ++position) {
      if (owner == layout_.replica) continue;
      exchange.recv_rows.push_back(static_cast<int32_t>(owner * exchange.width + sent[owner] + i));
      exchange.recv_slots.push_back(table[position / layout.block_size] * layout.block_size +
                                    position % layout.block_size);
    }
    sent[owner] += split.piece_tokens[j];
  }
  return exchange;
}

bool Model::Replayable(const ForwardBatch& batch, const StepArrays& step) const {
  // Decode steps only (one token per sequence), on one rank: the expanded
  // form, expert dispatch and collectives make host round trips.
  if (!step.expanded.empty() || shard_.group != nullptr || shard_.attention != nullptr || dispatch_.has_value()) {
    return false;
  }
  for (const SequenceSlice& seq : batch.layout.seqs) {
    if (seq.num_tokens != 1) return false;
  }
  return true;
}

absl::StatusOr<Model::StepArrays> Model::MakeStepArrays(const ForwardBatch& batch, AttentionForm form) const {
  // With the KV blocks spread over the head shards no rank can expand a
  // sequence's keys: every token takes the absorbed form.
  if (decode_context_parallel_) form = AttentionForm::kAbsorbed;
  StepArrays step;
  // Ids outside this shard's vocabulary slice read the table's zero last row;
  // the head shards' lookups then add up to the embedding.
  const Range vocab = layout_.vocab;
  for (const int32_t id : batch.token_ids) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
    step.local_ids.push_back(id >= vocab.begin && id < vocab.end ? static_cast<int32_t>(id - vocab.begin)
                                                                 : static_cast<int32_t>(layout_.vocab_shard_rows));
  }
  const int64_t num_tokens = static_cast<int64_t>(batch.token_ids.size());
  for (int64_t r : batch.logit_rows) {
    if (r < 0 || r >= num_tokens) return absl::InvalidArgumentError(absl::StrCat("logit row ", r, " not in batch"));
    step.logit_rows.push_back(static_cast<int32_t>(r));
  }
  step.positions = batch.layout.TokenPositions();
  step.slots = batch.layout.TokenSlots();
  for (const ContextSplit& split : batch.context_splits) {
    ASSIGN_OR_RETURN(ChunkExchange exchange, PlanExchange(split, batch.layout));
    step.exchanges.push_back(std::move(exchange));
  }
  const int64_t heads = static_cast<int64_t>(layout_.heads.size());
  const int64_t element_bytes = static_cast<int64_t>(DTypeBytes(ops_.storage_dtype()));
  std::vector<bool> is_expanded(batch.layout.seqs.size(), false);
  for (size_t i = 0; i < batch.layout.seqs.size(); ++i) {
    const SequenceSlice& seq = batch.layout.seqs[i];
    if (form == AttentionForm::kAbsorbed || seq.num_tokens <= 0 || seq.num_tokens > seq.context_len) continue;
    const int64_t group_heads =
        ExpandedGroupHeads(config_, heads, seq.context_len, element_bytes, expanded_scratch_bytes_);
    if (group_heads == 0 && form == AttentionForm::kExpanded) {
      return absl::ResourceExhaustedError(absl::StrCat("the expanded form of a ", seq.context_len,
                                                       "-position context does not fit its scratch"));
    }
    if (group_heads == 0 ||
        (form == AttentionForm::kCheapest && !ExpandedIsCheaper(config_, group_heads, seq.num_tokens, seq.context_len))) {
      continue;
    }
    is_expanded[i] = true;
    auto same = std::find_if(step.expanded.begin(), step.expanded.end(), [&](const StepArrays::ExpandedKeys& e) {
      return batch.layout.seqs[e.slices[0]].block_table == seq.block_table;
    });
    if (same == step.expanded.end()) same = step.expanded.insert(step.expanded.end(), StepArrays::ExpandedKeys{});
    same->slices.push_back(i);
    same->keys = std::max(same->keys, seq.context_len);
  }
  for (StepArrays::ExpandedKeys& e : step.expanded) {
    e.group_heads = ExpandedGroupHeads(config_, heads, e.keys, element_bytes, expanded_scratch_bytes_);
  }
  step.absorbed_rows = num_tokens;
  if (!step.expanded.empty()) {
    step.absorbed.block_size = batch.layout.block_size;
    int64_t end = 0;
    step.absorbed_begin = num_tokens;
    for (size_t i = 0; i < batch.layout.seqs.size(); ++i) {
      const SequenceSlice& seq = batch.layout.seqs[i];
      if (is_expanded[i]) continue;
      step.absorbed.seqs.push_back(seq);
      step.absorbed_begin = std::min(step.absorbed_begin, seq.token_begin);
      end = std::max(end, seq.token_begin + seq.num_tokens);
    }
    for (SequenceSlice& seq : step.absorbed.seqs) seq.token_begin -= step.absorbed_begin;
    step.absorbed_rows = std::max<int64_t>(0, end - step.absorbed_begin);
  }
  return step;
}

absl::StatusOr<Tensor> Model::RunLayers(const ForwardBatch& batch, const StepArrays& step, KvCache& cache) {
  const int64_t num_tokens = static_cast<int64_t>(batch.token_ids.size());
  ASSIGN_OR_RETURN(Tensor residual, Embed(step.local_ids));
  ASSIGN_OR_RETURN(Tensor x, ops_.Empty(ops_.storage_dtype(), {num_tokens, config_.hidden_size}));
  Tensor ffn_out;
  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const LayerWeights& w = weights_.layers[layer];
    if (layer == 0) {
      RETURN_IF_ERROR(ops_.RmsNorm(residual, w.input_norm, config_.rms_norm_eps, &x));
    } else {
      RETURN_IF_ERROR(ops_.AddRmsNorm(&residual, ffn_out, w.input_norm, config_.rms_norm_eps, &x));
    }
    ASSIGN_OR_RETURN(Tensor attn_out, Attention(w, layer, x, batch, step, cache));
    RETURN_IF_ERROR(ops_.AddRmsNorm(&residual, attn_out, w.post_attention_norm, config_.rms_norm_eps, &x));
    ASSIGN_OR_RETURN(ffn_out, FeedForward(w, x));
  }
  RETURN_IF_ERROR(ops_.AddRmsNorm(&residual, ffn_out, weights_.final_norm, config_.rms_norm_eps, &x));
  return Logits(x, step.logit_rows);
}

absl::StatusOr<Tensor> Model::Embed(const std::vector<int32_t>& local_ids) {
  ASSIGN_OR_RETURN(Tensor out,
                   ops_.Empty(ops_.storage_dtype(), {static_cast<int64_t>(local_ids.size()), config_.hidden_size}));
  RETURN_IF_ERROR(ops_.Embedding(weights_.embed, local_ids, &out));
  RETURN_IF_ERROR(SumOverHeads(&out));
  return out;
}

absl::StatusOr<Tensor> Model::Logits(const Tensor& hidden, const std::vector<int32_t>& rows) {
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  // Gathering rows is an embedding lookup with the hidden states as the table.
  ASSIGN_OR_RETURN(Tensor last, ops_.Empty(ops_.storage_dtype(), {num_rows, config_.hidden_size}));
  RETURN_IF_ERROR(ops_.Embedding(hidden, rows, &last));
  ASSIGN_OR_RETURN(Tensor shard_logits, LinearOf(last, weights_.lm_head));
  const int tp = shard_.plan.tp;
  if (tp == 1) return Reshape(shard_logits, {1, num_rows, layout_.vocab_shard_rows});
  ASSIGN_OR_RETURN(Tensor all, ops_.Empty(shard_logits.dtype, {tp, num_rows, layout_.vocab_shard_rows}));
  RETURN_IF_ERROR(ReadyForCollective(ops_, *shard_.attention));
  RETURN_IF_ERROR(shard_.attention->AllGather(shard_logits.data, all.data, shard_logits.numel(), all.dtype));
  return all;
}

absl::StatusOr<Tensor> Model::Attention(const LayerWeights& w, int64_t layer, const Tensor& x,
                                        const ForwardBatch& batch, const StepArrays& step, KvCache& cache) {
  const int64_t num_tokens = x.dim(0), heads = layout_.heads.size();
  Tensor q_in = x;
  if (config_.q_lora_rank > 0) {
    ASSIGN_OR_RETURN(Tensor q_a, LinearOf(x, w.q_a));
    RETURN_IF_ERROR(ops_.RmsNorm(q_a, w.q_a_norm, config_.rms_norm_eps, &q_a));
    q_in = q_a;
  }
  ASSIGN_OR_RETURN(Tensor q_nope, LinearOf(q_in, w.q_nope));
  ASSIGN_OR_RETURN(Tensor q_rope, LinearOf(q_in, w.q_rope));
  q_nope = Reshape(q_nope, {num_tokens, heads, config_.qk_nope_head_dim});
  q_rope = Reshape(q_rope, {num_tokens, heads, config_.qk_rope_head_dim});
  RETURN_IF_ERROR(ops_.Rope(&q_rope, step.positions, rope_));

  ASSIGN_OR_RETURN(Tensor c_kv, LinearOf(x, w.kv_a_latent));
  RETURN_IF_ERROR(ops_.RmsNorm(c_kv, w.kv_a_norm, config_.rms_norm_eps, &c_kv));
  ASSIGN_OR_RETURN(Tensor k_rope, LinearOf(x, w.kv_a_rope));
  Tensor k_rope_heads = Reshape(k_rope, {num_tokens, 1, config_.qk_rope_head_dim});
  RETURN_IF_ERROR(ops_.Rope(&k_rope_heads, step.positions, rope_));
  RETURN_IF_ERROR(ops_.WriteLatentCache(c_kv, k_rope, step.slots, layer, &cache.pool()));
  for (const ChunkExchange& exchange : step.exchanges) {
    RETURN_IF_ERROR(ShareChunkLatent(exchange, c_kv, k_rope, layer, cache));
  }

  ASSIGN_OR_RETURN(Tensor o, ops_.Empty(ops_.storage_dtype(), {num_tokens, heads, config_.v_head_dim}));
  const AttentionLayout& absorbed = step.AbsorbedLayout(batch);
  if (!absorbed.seqs.empty()) {
    const int64_t begin = step.absorbed_begin, rows = step.absorbed_rows;
    Tensor absorbed_out = SliceRows(o, begin, rows);
    RETURN_IF_ERROR(AbsorbedAttention(w, layer, SliceRows(q_nope, begin, rows), SliceRows(q_rope, begin, rows),
                                      absorbed, cache, &absorbed_out));
  }
  for (const StepArrays::ExpandedKeys& expanded : step.expanded) {
    RETURN_IF_ERROR(ExpandedAttention(w, layer, q_nope, q_rope, batch.layout, expanded, cache, &o));
  }
  ASSIGN_OR_RETURN(Tensor out, LinearOf(Reshape(o, {num_tokens, heads * config_.v_head_dim}), w.o_proj));
  RETURN_IF_ERROR(SumOverHeads(&out));
  return out;
}

absl::Status Model::ShareChunkLatent(const ChunkExchange& exchange, const Tensor& c_kv, const Tensor& k_rope,
                                     int64_t layer, KvCache& cache) {
  const int64_t rank = config_.kv_lora_rank, rope = config_.qk_rope_head_dim, width = exchange.width;
  const int replicas = shard_.plan.dp_attention;
  // Gathering rows is an embedding lookup with the rows as the table.
  ASSIGN_OR_RETURN(Tensor send_c, ops_.Empty(c_kv.dtype, {width, rank}));
  ASSIGN_OR_RETURN(Tensor send_r, ops_.Empty(k_rope.dtype, {width, rope}));
  RETURN_IF_ERROR(ops_.Embedding(c_kv, exchange.send_rows, &send_c));
  RETURN_IF_ERROR(ops_.Embedding(k_rope, exchange.send_rows, &send_r));
  ASSIGN_OR_RETURN(Tensor all_c, ops_.Empty(c_kv.dtype, {replicas * width, rank}));
  ASSIGN_OR_RETURN(Tensor all_r, ops_.Empty(k_rope.dtype, {replicas * width, rope}));
  RETURN_IF_ERROR(ReadyForCollective(ops_, *shard_.context));
  RETURN_IF_ERROR(shard_.context->AllGather(send_c.data, all_c.data, send_c.numel(), send_c.dtype));
  RETURN_IF_ERROR(shard_.context->AllGather(send_r.data, all_r.data, send_r.numel(), send_r.dtype));
  const int64_t count = static_cast<int64_t>(exchange.recv_rows.size());
  ASSIGN_OR_RETURN(Tensor other_c, ops_.Empty(c_kv.dtype, {count, rank}));
  ASSIGN_OR_RETURN(Tensor other_r, ops_.Empty(k_rope.dtype, {count, rope}));
  RETURN_IF_ERROR(ops_.Embedding(all_c, exchange.recv_rows, &other_c));
  RETURN_IF_ERROR(ops_.Embedding(all_r, exchange.recv_rows, &other_r));
  return ops_.WriteLatentCache(other_c, other_r, exchange.recv_slots, layer, &cache.pool());
}

absl::Status Model::AbsorbedAttention(const LayerWeights& w, int64_t layer, const Tensor& q_nope,
                                      const Tensor& q_rope, const AttentionLayout& layout, KvCache& cache,
                                      Tensor* out) {
  const int64_t num_tokens = q_nope.dim(0), heads = q_nope.dim(1), rank = config_.kv_lora_rank;
  ASSIGN_OR_RETURN(Tensor q_latent, ops_.Empty(ops_.storage_dtype(), {num_tokens, heads, rank}));
  RETURN_IF_ERROR(ops_.HeadLinear(q_nope, w.w_uk_t, &q_latent));
  ASSIGN_OR_RETURN(Tensor o_latent, ops_.Empty(ops_.storage_dtype(), {num_tokens, heads, rank}));
  if (decode_context_parallel_) {
    RETURN_IF_ERROR(ShardedContextAttention(q_latent, q_rope, layer, layout, cache, &o_latent));
  } else {
    RETURN_IF_ERROR(
        ops_.MlaAbsorbedAttention(q_latent, q_rope, cache.pool(), layer, layout, softmax_scale_, &o_latent));
  }
  return ops_.HeadLinear(o_latent, w.w_uv, out);
}

absl::Status Model::ShardedContextAttention(const Tensor& q_latent, const Tensor& q_rope, int64_t layer,
                                            const AttentionLayout& layout, KvCache& cache, Tensor* o_latent) {
  const int tp = shard_.plan.tp;
  const int64_t num_tokens = q_latent.dim(0), heads = q_latent.dim(1), rank = q_latent.dim(2);
  const int64_t rope = q_rope.dim(2);
  const DType dtype = ops_.storage_dtype();
  Communicator& shards = *shard_.attention;
  ASSIGN_OR_RETURN(Tensor all_latent, ops_.Empty(dtype, {tp, num_tokens, heads, rank}));
  ASSIGN_OR_RETURN(Tensor all_rope, ops_.Empty(dtype, {tp, num_tokens, heads, rope}));
  RETURN_IF_ERROR(ReadyForCollective(ops_, shards));
  RETURN_IF_ERROR(shards.AllGather(q_latent.data, all_latent.data, q_latent.numel(), dtype));
  RETURN_IF_ERROR(shards.AllGather(q_rope.data, all_rope.data, q_rope.numel(), dtype));
  // parts[s] and lse[s]: shard s's heads over this rank's blocks, sent to s.
  ASSIGN_OR_RETURN(Tensor parts, ops_.Empty(dtype, {tp, num_tokens, heads, rank}));
  ASSIGN_OR_RETURN(Tensor lse, ops_.Empty(DType::kF32, {tp, num_tokens, heads}));
  for (int s = 0; s < tp; ++s) {
    Tensor part = Reshape(SliceRows(parts, s, 1), {num_tokens, heads, rank});
    Tensor part_lse = Reshape(SliceRows(lse, s, 1), {num_tokens, heads});
    RETURN_IF_ERROR(ops_.MlaAbsorbedAttentionPart(Reshape(SliceRows(all_latent, s, 1), {num_tokens, heads, rank}),
                                                  Reshape(SliceRows(all_rope, s, 1), {num_tokens, heads, rope}),
                                                  cache.pool(), layer, layout, softmax_scale_, &part, &part_lse));
  }
  // mine[r] and mine_lse[r]: this rank's heads over rank r's blocks.
  ASSIGN_OR_RETURN(Tensor mine, ops_.Empty(dtype, {tp, num_tokens, heads, rank}));
  ASSIGN_OR_RETURN(Tensor mine_lse, ops_.Empty(DType::kF32, {tp, num_tokens, heads}));
  const std::vector<int64_t> part_counts(tp, num_tokens * heads * rank), lse_counts(tp, num_tokens * heads);
  RETURN_IF_ERROR(ReadyForCollective(ops_, shards));
  RETURN_IF_ERROR(shards.AllToAllV(parts.data, part_counts, mine.data, part_counts, dtype));
  RETURN_IF_ERROR(shards.AllToAllV(lse.data, lse_counts, mine_lse.data, lse_counts, DType::kF32));
  return ops_.CombineAttentionParts(mine, mine_lse, o_latent);
}

absl::Status Model::ExpandedAttention(const LayerWeights& w, int64_t layer, const Tensor& q_nope,
                                      const Tensor& q_rope, const AttentionLayout& layout,
                                      const StepArrays::ExpandedKeys& expanded, KvCache& cache, Tensor* out) {
  const int64_t heads = q_nope.dim(1), nope = config_.qk_nope_head_dim, dv = config_.v_head_dim;
  const int64_t keys = expanded.keys, group_heads = expanded.group_heads;
  const Tensor w_uv = Reshape(w.w_uv, {heads * dv, config_.kv_lora_rank});
  const std::vector<int32_t>& table = layout.seqs[expanded.slices[0]].block_table;
  ASSIGN_OR_RETURN(Tensor c_kv, ops_.Empty(ops_.storage_dtype(), {keys, config_.kv_lora_rank}));
  ASSIGN_OR_RETURN(Tensor k_rope, ops_.Empty(ops_.storage_dtype(), {keys, config_.qk_rope_head_dim}));
  RETURN_IF_ERROR(ops_.GatherLatent(cache.pool(), layer, table, keys, &c_kv, &k_rope));
  for (int64_t first = 0; first < heads; first += group_heads) {
    const int64_t n = std::min(group_heads, heads - first);
    ASSIGN_OR_RETURN(Tensor k_nope, LinearOf(c_kv, SliceRows(w.w_uk, first * nope, n * nope)));
    ASSIGN_OR_RETURN(Tensor v, LinearOf(c_kv, SliceRows(w_uv, first * dv, n * dv)));
    // Keys are in position order: a slice sees the prefix up to its last token.
    for (const size_t index : expanded.slices) {
      const SequenceSlice& seq = layout.seqs[index];
      Tensor seq_out = SliceRows(*out, seq.token_begin, seq.num_tokens);
      RETURN_IF_ERROR(ops_.MlaExpandedAttention(
          SliceRows(q_nope, seq.token_begin, seq.num_tokens), SliceRows(q_rope, seq.token_begin, seq.num_tokens),
          SliceRows(Reshape(k_nope, {keys, n, nope}), 0, seq.context_len), SliceRows(k_rope, 0, seq.context_len),
          SliceRows(Reshape(v, {keys, n, dv}), 0, seq.context_len), first, softmax_scale_, &seq_out));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> Model::DenseMlp(const MlpWeights& w, const Tensor& x) {
  ASSIGN_OR_RETURN(Tensor gate_up, LinearOf(x, w.gate_up));
  ASSIGN_OR_RETURN(Tensor act, ops_.Empty(ops_.storage_dtype(), {x.dim(0), w.gate_up.dim(0) / 2}));
  RETURN_IF_ERROR(ops_.SiluMul(gate_up, &act));
  return LinearOf(act, w.down);
}

RouterConfig Model::MakeRouterConfig() const {
  RouterConfig r;
  r.sigmoid = config_.scoring_func == ScoringFunc::kSigmoid;
  r.noaux_tc = config_.topk_method == TopkMethod::kNoauxTc;
  r.group_limited = config_.topk_method == TopkMethod::kGroupLimitedGreedy;
  r.num_groups = config_.n_group;
  r.topk_groups = config_.topk_group;
  r.top_k = config_.num_experts_per_tok;
  r.normalize = config_.norm_topk_prob && r.top_k > 1;
  r.scaling = static_cast<float>(config_.routed_scaling_factor);
  // DeepSeek-V2 normalizes or scales, never both; V3 normalizes then scales.
  if (config_.model_type == "deepseek_v2" && r.normalize) r.scaling = 1.0f;
  return r;
}

absl::StatusOr<Tensor> Model::FeedForward(const LayerWeights& w, const Tensor& x) {
  Tensor out;
  if (w.is_moe) {
    ASSIGN_OR_RETURN(out, RoutedExperts(w, x));
    if (w.has_shared_experts) {
      ASSIGN_OR_RETURN(Tensor shared, DenseMlp(w.mlp, x));
      RETURN_IF_ERROR(ops_.Add(&out, shared));
    }
  } else {
    ASSIGN_OR_RETURN(out, DenseMlp(w.mlp, x));
  }
  // Inner-dimension partials of the dense MLP and shared experts, and the
  // routed outputs of the tokens each head shard dispatched, add up here.
  RETURN_IF_ERROR(SumOverHeads(&out));
  return out;
}

absl::StatusOr<Tensor> Model::RoutedExperts(const LayerWeights& w, const Tensor& x) {
  const int64_t num_tokens = x.dim(0), top_k = config_.num_experts_per_tok;
  ASSIGN_OR_RETURN(Tensor router_logits, LinearOf(x, w.router));
  ASSIGN_OR_RETURN(Tensor topk_ids, ops_.Empty(DType::kI32, {num_tokens, top_k}));
  ASSIGN_OR_RETURN(Tensor topk_weights, ops_.Empty(DType::kF32, {num_tokens, top_k}));
  const Tensor* bias = w.router_bias.data != nullptr ? &w.router_bias : nullptr;
  RETURN_IF_ERROR(ops_.MoeRoute(router_logits, bias, MakeRouterConfig(), &topk_ids, &topk_weights));
  if (!dispatch_.has_value()) {
    ASSIGN_OR_RETURN(Tensor out, ops_.Empty(ops_.storage_dtype(), {num_tokens, config_.hidden_size}));
    RETURN_IF_ERROR(ops_.MoeExperts(x, topk_ids, topk_weights, w.experts_gate_up, w.experts_down, 0, &out));
    return out;
  }
  std::vector<float> ids(topk_ids.numel()), weights(topk_weights.numel());
  RETURN_IF_ERROR(ops_.Download(topk_ids, absl::MakeSpan(ids)));
  RETURN_IF_ERROR(ops_.Download(topk_weights, absl::MakeSpan(weights)));
  return dispatch_->Run(x, ids, weights, top_k, w.experts_gate_up, w.experts_down);
}

absl::Status Model::IdleStep() {
  if (!dispatch_.has_value()) return absl::OkStatus();
  ASSIGN_OR_RETURN(Tensor none, ops_.Empty(ops_.storage_dtype(), {0, config_.hidden_size}));
  for (const LayerWeights& w : weights_.layers) {
    if (!w.is_moe) continue;
    RETURN_IF_ERROR(dispatch_->Run(none, {}, {}, config_.num_experts_per_tok, w.experts_gate_up, w.experts_down)
                        .status());
  }
  return absl::OkStatus();
}

}  // namespace mlaserve
