// A sharded model (ranks as threads talking through Gloo on loopback) against
// the same model on one rank: tensor-parallel attention, expert parallelism,
// expert tensor parallelism and data-parallel attention replicas must give the
// same logits, within float32 summation-order noise.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/group_comms.h"
#include "worker/kv_shards.h"
#include "worker/model.h"
#include "worker/random_checkpoint.h"

namespace mlaserve {

void PrintTo(const ParallelPlan& plan, std::ostream* os) { *os << plan.ToString(); }

namespace {

constexpr int64_t kBlockSize = 16;
constexpr int64_t kBlocksPerSeq = 4;

double RelativeError(const float* out, const float* ref, int64_t n) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (double(out[i]) - ref[i]) * (double(out[i]) - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return std::sqrt(diff / norm);
}

// Two steps of a few sequences: a prefill of each prompt, then one decode
// token each. Sequence i owns cache blocks [i * kBlocksPerSeq, ...); with
// decode context parallelism over `shards` head shards, shard `shard` sees
// the tables as it holds them (HeldBlockTable).
struct Workload {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> next_tokens;
};

ForwardBatch MakeBatch(const Workload& w, const std::vector<int>& seqs, bool decode, int shards, int shard) {
  ForwardBatch batch;
  batch.layout.block_size = kBlockSize;
  for (int i : seqs) {
    const std::vector<int32_t>& prompt = w.prompts[i];
    std::vector<int32_t> tokens = decode ? std::vector<int32_t>{w.next_tokens[i]} : prompt;
    SequenceSlice slice;
    slice.token_begin = static_cast<int64_t>(batch.token_ids.size());
    slice.num_tokens = static_cast<int64_t>(tokens.size());
    slice.context_len = static_cast<int64_t>(prompt.size()) + (decode ? 1 : 0);
    for (int64_t b = 0; b < kBlocksPerSeq; ++b) slice.block_table.push_back(static_cast<int32_t>(i * kBlocksPerSeq + b));
    if (shards > 1) slice.block_table = HeldBlockTable(slice.block_table, shards, shard);
    batch.token_ids.insert(batch.token_ids.end(), tokens.begin(), tokens.end());
    batch.logit_rows.push_back(slice.token_begin + slice.num_tokens - 1);
    batch.layout.seqs.push_back(std::move(slice));
  }
  return batch;
}

// Logits of the last token of every sequence in `seqs`, prefill then decode.
absl::StatusOr<std::vector<std::vector<float>>> RunSteps(Model& model, KvCache& cache, const Workload& w,
                                                   const std::vector<int>& seqs, int shards = 1, int shard = 0) {
  std::vector<std::vector<float>> steps;
  for (bool decode : {false, true}) {
    absl::StatusOr<std::vector<float>> logits = model.Forward(MakeBatch(w, seqs, decode, shards, shard), cache);
    if (!logits.ok()) return logits.status();
    steps.push_back(*std::move(logits));
  }
  return steps;
}

// What each rank of a group computes: its logits, step by step.
using RankSteps = std::vector<std::vector<float>>;
using RankFn = std::function<absl::StatusOr<RankSteps>(int rank, Model& model, KvCache& cache)>;

// Runs `fn` on every rank of `plan` (threads talking through Gloo on
// loopback), each with its shard of the model in `dir` and a cache of
// `cache_blocks` blocks of `kv_dtype` (spread over the head shards with
// `decode_context_parallel`); every rank's result, or the first rank's
// failure.
absl::StatusOr<std::vector<RankSteps>> RunRanks(const ParallelPlan& plan, const std::string& dir,
                                                const ModelConfig& config, int64_t cache_blocks, const RankFn& fn,
                                                KvCacheDtype kv_dtype = KvCacheDtype::kStorage,
                                                bool decode_context_parallel = false) {
  const int ranks = plan.group_size();
  InMemoryRendezvousStore store;
  std::vector<absl::Status> status(ranks);
  std::vector<RankSteps> got(ranks);
  std::vector<std::thread> threads;
  auto factory = [](RendezvousStore& s, const std::string& prefix, int rank, int size, absl::Duration timeout) {
    return NewGlooCommunicator(s, prefix, rank, size, GlooOptions{.timeout = timeout});
  };
  for (int g = 0; g < ranks; ++g) {
    threads.emplace_back([&, g] {
      status[g] = [&]() -> absl::Status {
        absl::StatusOr<GroupComms> comms = ConnectGroup(store, "test", plan, g, absl::Seconds(60), factory);
        if (!comms.ok()) return comms.status();
        auto rank_ops = NewCpuOps();
        auto model = Model::Load(dir, *rank_ops, comms->shard());
        if (!model.ok()) return model.status();
        if (absl::Status set = (*model)->set_decode_context_parallel(decode_context_parallel); !set.ok()) return set;
        const int64_t held = decode_context_parallel ? (cache_blocks + plan.tp - 1) / plan.tp : cache_blocks;
        auto rank_cache = KvCache::Create(*rank_ops, config, held, kBlockSize, kv_dtype);
        if (!rank_cache.ok()) return rank_cache.status();
        absl::StatusOr<RankSteps> steps = fn(g, **model, *rank_cache);
        if (!steps.ok()) return steps.status();
        got[g] = *std::move(steps);
        return absl::OkStatus();
      }();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int g = 0; g < ranks; ++g) {
    if (!status[g].ok()) return absl::Status(status[g].code(), absl::StrCat("rank ", g, ": ", status[g].message()));
  }
  return got;
}

class ModelParallelTest : public ::testing::TestWithParam<ParallelPlan> {
 protected:
  // Every sequence's logits within `worst` of one rank's, and at least half
  // within 1e-5 (float32 sums in another order; FP8 activations may also round
  // the other way at a boundary, which moves a sequence by FP8's own error).
  // With `decode_context_parallel` the replicas' head shards hold the KV
  // blocks between them.
  void Check(const std::string& dir, int num_seqs, double worst = 1e-5, bool decode_context_parallel = false) {
    const ParallelPlan plan = GetParam();
    auto config = LoadModelConfig(dir + "/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    if (!ValidatePlan(*config, plan).ok()) GTEST_SKIP() << ValidatePlan(*config, plan);
    std::mt19937 rng(std::random_device{}());
    Workload w;
    std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config->vocab_size) - 1);
    for (int i = 0; i < num_seqs; ++i) {
      std::vector<int32_t> prompt(std::uniform_int_distribution<int>(1, 40)(rng));
      for (int32_t& t : prompt) t = token(rng);
      w.prompts.push_back(prompt);
      w.next_tokens.push_back(token(rng));
    }
    std::vector<int> all(num_seqs);
    for (int i = 0; i < num_seqs; ++i) all[i] = i;

    auto ops = NewCpuOps();
    auto whole = Model::Load(dir, *ops);
    ASSERT_TRUE(whole.ok()) << whole.status();
    auto cache = KvCache::Create(*ops, *config, num_seqs * kBlocksPerSeq, kBlockSize);
    ASSERT_TRUE(cache.ok());
    auto ref = RunSteps(**whole, *cache, w, all);
    ASSERT_TRUE(ref.ok()) << ref.status();

    const int ranks = plan.group_size();
    const int64_t vocab = config->vocab_size;
    auto got = RunRanks(
        plan, dir, *config, num_seqs * kBlocksPerSeq,
        [&](int g, Model& model, KvCache& cache) {
          std::vector<int> mine;
          for (int i = 0; i < num_seqs; ++i) {
            if (i % plan.dp_attention == g / plan.tp) mine.push_back(i);
          }
          return decode_context_parallel ? RunSteps(model, cache, w, mine, plan.tp, g % plan.tp)
                                         : RunSteps(model, cache, w, mine);
        },
        KvCacheDtype::kStorage, decode_context_parallel);
    ASSERT_TRUE(got.ok()) << got.status();
    int close = 0, compared = 0;
    for (int g = 0; g < ranks; ++g) {
      int row = 0;
      for (int i = 0; i < num_seqs; ++i) {
        if (i % plan.dp_attention != g / plan.tp) continue;
        for (int step = 0; step < 2; ++step) {
          ASSERT_EQ((*got)[g][step].size() % vocab, 0u);
          const double err =
              RelativeError((*got)[g][step].data() + row * vocab, (*ref)[step].data() + i * vocab, vocab);
          EXPECT_LT(err, worst) << "rank " << g << " seq " << i << " step " << step;
          close += err < 1e-5;
          ++compared;
        }
        ++row;
      }
      EXPECT_EQ(static_cast<int64_t>((*got)[g][0].size()), row * vocab) << "rank " << g;
    }
    EXPECT_GE(2 * close, compared) << close << " of " << compared << " within 1e-5";
  }
};

TEST_P(ModelParallelTest, TinyFixtureMatchesOneRank) { Check("tests/testdata/tiny-deepseek-v3", 3); }

// Decode context parallelism: each head shard holds every tp-th block of its
// replica's sequences, and the logits are still one rank's.
TEST_P(ModelParallelTest, DecodeContextParallelMatchesOneRank) {
  if (GetParam().tp == 1) GTEST_SKIP() << "decode context parallelism spreads KV over head shards";
  Check("tests/testdata/tiny-deepseek-v3", 3, 1e-5, /*decode_context_parallel=*/true);
}

// Softmax group-limited routing, two shared experts, no q compression, and a
// vocabulary that does not divide by the head shards (padded slices).
const char kV2Config[] = R"({
  "model_type": "deepseek_v2", "vocab_size": 301, "hidden_size": 64, "intermediate_size": 96,
  "moe_intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "q_lora_rank": null,
  "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
  "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
  "n_routed_experts": 10, "num_experts_per_tok": 3, "n_shared_experts": 2, "n_group": 5, "topk_group": 2,
  "topk_method": "group_limited_greedy", "scoring_func": "softmax", "norm_topk_prob": false,
  "routed_scaling_factor": 16.0, "first_k_dense_replace": 1, "moe_layer_freq": 1, "hidden_act": "silu",
  "bos_token_id": 0, "eos_token_id": 1})";

TEST_P(ModelParallelTest, GeneratedV2MatchesOneRank) {
  const ParallelPlan plan = GetParam();
  const std::string dir = absl::StrCat(std::getenv("TEST_TMPDIR"), "/v2_", plan.tp, "_", plan.dp_attention, "_", plan.ep);
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << kV2Config;
  auto config = LoadModelConfig(dir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(WriteRandomCheckpoint(*config, dir, std::random_device{}(), DType::kBF16).ok());
  Check(dir, 3);
}

// An FP8 checkpoint (DeepSeek's 128x128 blocks) whose every shard boundary
// falls on a 128-column group, as in DeepSeek-V3 (v_head_dim 128, inner sizes
// of multiples of 128 per rank): each rank keeps its projections FP8 and
// quantizes the same activation groups as one rank does.
const char kV3Fp8Config[] = R"({
  "model_type": "deepseek_v3", "vocab_size": 203, "hidden_size": 128, "intermediate_size": 512,
  "moe_intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "q_lora_rank": 64,
  "kv_lora_rank": 64, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 128,
  "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
  "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1, "n_group": 4, "topk_group": 2,
  "norm_topk_prob": true, "routed_scaling_factor": 2.5, "first_k_dense_replace": 1, "hidden_act": "silu"})";

TEST_P(ModelParallelTest, Fp8CheckpointMatchesOneRank) {
  const ParallelPlan plan = GetParam();
  const std::string dir = absl::StrCat(std::getenv("TEST_TMPDIR"), "/v3_fp8_", plan.tp, "_", plan.dp_attention, "_",
                                       plan.ep);
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << kV3Fp8Config;
  auto config = LoadModelConfig(dir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(WriteRandomCheckpoint(*config, dir, std::random_device{}(), DType::kF32).ok());
  ASSERT_TRUE(QuantizeCheckpointFp8(dir, dir + "/fp8").ok());
  Check(dir + "/fp8", 3, /*worst=*/5e-2);
}

// A prompt computed context-parallel: two chunks, each cut at random into
// pieces owned by random replicas (each at least one), every replica writing
// the whole chunk's KV into its own copy (blocks of its own choosing, in a
// cache of `kv_dtype`), then one decode token on every copy. Every piece's
// logits, and each copy's decode, are one rank's over the same kind of cache:
// all within 1e-5 over a float cache; over an FP8 cache, all within 5e-2 and
// at least half within 1e-5 (a latent value that sums in another order may
// round to the other e4m3 neighbour). A short prompt of its own rides along
// in one replica's steps.
void CheckContextParallel(const ParallelPlan& plan, KvCacheDtype kv_dtype) {
  if (plan.dp_attention == 1) GTEST_SKIP() << "context parallelism splits over attention replicas";
  const double worst = kv_dtype == KvCacheDtype::kFp8 ? 5e-2 : 1e-5;
  int close = 0, compared = 0;
  auto expect_close = [&](double err, const std::string& what) {
    EXPECT_LT(err, worst) << what;
    close += err < 1e-5;
    ++compared;
  };
  const std::string dir = absl::StrCat(std::getenv("TEST_TMPDIR"), "/cp_", plan.tp, "_", plan.dp_attention, "_",
                                       plan.ep, kv_dtype == KvCacheDtype::kFp8 ? "_fp8" : "");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << kV2Config;
  auto config = LoadModelConfig(dir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(WriteRandomCheckpoint(*config, dir, std::random_device{}(), DType::kBF16).ok());
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config->vocab_size) - 1);
  const int replicas = plan.dp_attention;
  const int64_t first_chunk = std::uniform_int_distribution<int64_t>(2 * replicas + 1, 40)(rng);
  const int64_t second_chunk = std::uniform_int_distribution<int64_t>(2 * replicas + 1, 20)(rng);
  std::vector<int32_t> prompt(first_chunk + second_chunk), rider(std::uniform_int_distribution<int>(1, 9)(rng));
  for (int32_t& t : prompt) t = token(rng);
  for (int32_t& t : rider) t = token(rng);
  const int32_t next = token(rng);
  const int64_t blocks = 8;  // per copy: 60 positions + 1 fit in 4 blocks of 16

  // One rank: the chunks with the logits of every position, then the decode.
  auto ops = NewCpuOps();
  auto whole = Model::Load(dir, *ops);
  ASSERT_TRUE(whole.ok()) << whole.status();
  auto cache = KvCache::Create(*ops, *config, 2 * blocks, kBlockSize, kv_dtype);
  ASSERT_TRUE(cache.ok());
  auto one_seq = [&](absl::Span<const int32_t> tokens, int64_t context_len, int32_t first_block, bool all_rows) {
    ForwardBatch batch;
    batch.layout.block_size = kBlockSize;
    SequenceSlice slice{.num_tokens = static_cast<int64_t>(tokens.size()), .context_len = context_len};
    for (int32_t b = 0; b < blocks; ++b) slice.block_table.push_back(first_block + b);
    batch.token_ids.assign(tokens.begin(), tokens.end());
    for (int64_t r = all_rows ? 0 : slice.num_tokens - 1; r < slice.num_tokens; ++r) batch.logit_rows.push_back(r);
    batch.layout.seqs.push_back(slice);
    return batch;
  };
  const absl::Span<const int32_t> all(prompt);
  std::vector<std::vector<float>> ref;
  for (const ForwardBatch& b : {one_seq(all.subspan(0, first_chunk), first_chunk, 0, true),
                                one_seq(all.subspan(first_chunk), first_chunk + second_chunk, 0, true),
                                one_seq({&next, 1}, first_chunk + second_chunk + 1, 0, true),
                                one_seq(rider, static_cast<int64_t>(rider.size()), blocks, false)}) {
    auto logits = (*whole)->Forward(b, *cache);
    ASSERT_TRUE(logits.ok()) << logits.status();
    ref.push_back(*std::move(logits));
  }

  // Each chunk: D to 2D + 1 pieces of random sizes, each replica owning one
  // or more.
  struct Chunk {
    int64_t begin, size;
    std::vector<int> owners;
    std::vector<int64_t> pieces;
    // `replica`'s pieces: their offsets in the chunk and sizes.
    std::vector<std::pair<int64_t, int64_t>> Of(int replica) const {
      std::vector<std::pair<int64_t, int64_t>> out;
      int64_t offset = 0;
      for (size_t j = 0; j < owners.size(); offset += pieces[j++]) {
        if (owners[j] == replica) out.push_back({offset, pieces[j]});
      }
      return out;
    }
  };
  std::vector<Chunk> chunks = {{0, first_chunk, {}, {}}, {first_chunk, second_chunk, {}, {}}};
  for (Chunk& c : chunks) {
    const int n = std::uniform_int_distribution<int>(replicas, 2 * replicas + 1)(rng);
    for (int j = 0; j < n; ++j)
      c.owners.push_back(j < replicas ? j : std::uniform_int_distribution<int>(0, replicas - 1)(rng));
    std::shuffle(c.owners.begin(), c.owners.end(), rng);
    std::vector<int64_t> cuts = {0, c.size};
    while (static_cast<int>(cuts.size()) < n + 1) {
      const int64_t cut = std::uniform_int_distribution<int64_t>(1, c.size - 1)(rng);
      if (std::find(cuts.begin(), cuts.end(), cut) == cuts.end()) cuts.push_back(cut);
    }
    std::sort(cuts.begin(), cuts.end());
    for (int j = 0; j < n; ++j) c.pieces.push_back(cuts[j + 1] - cuts[j]);
  }
  const int rider_replica = std::uniform_int_distribution<int>(0, replicas - 1)(rng);

  const int ranks = plan.group_size();
  const int64_t vocab = config->vocab_size;
  auto got = RunRanks(plan, dir, *config, (replicas + 1) * blocks,
                      [&](int g, Model& model, KvCache& cache) -> absl::StatusOr<RankSteps> {
                        RankSteps steps;
                        const int replica = g / plan.tp;
                        {  // A split that does not name every replica once is refused before any collective.
                          ForwardBatch bad;
                          bad.layout.block_size = kBlockSize;
                          bad.token_ids = {prompt[0]};
                          bad.layout.seqs.push_back({.num_tokens = 1, .context_len = 1, .block_table = {0}});
                          bad.context_splits.push_back({.seqs = {0}, .owners = {replica}, .piece_tokens = {1}});
                          if (model.Forward(bad, cache).status().code() != absl::StatusCode::kInvalidArgument) {
                            return absl::InternalError("a split over one replica was not refused");
                          }
                        }
                        // Each replica's copy in blocks of its own, backwards.
                        std::vector<int32_t> table;
                        for (int64_t b = 0; b < blocks; ++b)
                          table.push_back(static_cast<int32_t>((replica + 1) * blocks - 1 - b));
                        for (const Chunk& c : chunks) {
                          ForwardBatch batch;
                          batch.layout.block_size = kBlockSize;
                          ContextSplit split{.owners = c.owners, .piece_tokens = c.pieces};
                          for (const auto& [offset, size] : c.Of(replica)) {
                            split.seqs.push_back(static_cast<int64_t>(batch.layout.seqs.size()));
                            batch.layout.seqs.push_back({.token_begin = static_cast<int64_t>(batch.token_ids.size()),
                                                         .num_tokens = size,
                                                         .context_len = c.begin + offset + size,
                                                         .block_table = table});
                            for (int64_t r = 0; r < size; ++r)
                              batch.logit_rows.push_back(static_cast<int64_t>(batch.token_ids.size()) + r);
                            batch.token_ids.insert(batch.token_ids.end(), prompt.begin() + c.begin + offset,
                                                   prompt.begin() + c.begin + offset + size);
                          }
                          batch.context_splits.push_back(std::move(split));
                          if (replica == rider_replica && &c == &chunks.back()) {
                            SequenceSlice r{.token_begin = static_cast<int64_t>(batch.token_ids.size()),
                                            .num_tokens = static_cast<int64_t>(rider.size()),
                                            .context_len = static_cast<int64_t>(rider.size())};
                            for (int32_t b = 0; b < blocks; ++b)
                              r.block_table.push_back(static_cast<int32_t>(replicas * blocks + b));
                            batch.token_ids.insert(batch.token_ids.end(), rider.begin(), rider.end());
                            batch.logit_rows.push_back(r.token_begin + r.num_tokens - 1);
                            batch.layout.seqs.push_back(r);
                          }
                          // Expanded: a replica's pieces of the chunk share one expansion of its keys.
                          auto logits = model.Forward(batch, cache, AttentionForm::kExpanded);
                          if (!logits.ok()) return logits.status();
                          steps.push_back(*std::move(logits));
                        }
                        ForwardBatch decode;
                        decode.layout.block_size = kBlockSize;
                        decode.token_ids = {next};
                        decode.logit_rows = {0};
                        decode.layout.seqs.push_back(
                            {.num_tokens = 1, .context_len = first_chunk + second_chunk + 1, .block_table = table});
                        auto logits = model.Forward(decode, cache);
                        if (!logits.ok()) return logits.status();
                        steps.push_back(*std::move(logits));
                        return steps;
                      },
                      kv_dtype);
  ASSERT_TRUE(got.ok()) << got.status();
  for (int g = 0; g < ranks; ++g) {
    const int replica = g / plan.tp;
    for (size_t k = 0; k < chunks.size(); ++k) {
      const Chunk& c = chunks[k];
      const bool rider_here = replica == rider_replica && k + 1 == chunks.size();
      int64_t row = 0;
      for (const auto& [offset, size] : c.Of(replica)) {
        for (int64_t r = 0; r < size; ++r, ++row) {
          ASSERT_LE((row + 1) * vocab, static_cast<int64_t>((*got)[g][k].size()));
          expect_close(RelativeError((*got)[g][k].data() + row * vocab, ref[k].data() + (offset + r) * vocab, vocab),
                       absl::StrCat("rank ", g, " chunk ", k, " position ", c.begin + offset + r));
        }
      }
      ASSERT_EQ(static_cast<int64_t>((*got)[g][k].size()), (row + (rider_here ? 1 : 0)) * vocab);
      if (rider_here) {
        expect_close(RelativeError((*got)[g][k].data() + row * vocab, ref[3].data(), vocab),
                     absl::StrCat("rank ", g, ": the prompt beside the split chunk"));
      }
    }
    expect_close(RelativeError((*got)[g][2].data(), ref[2].data(), vocab), absl::StrCat("rank ", g, ": decode on its copy"));
  }
  EXPECT_GE(2 * close, compared) << close << " of " << compared << " within 1e-5";
}

TEST_P(ModelParallelTest, ContextParallelPrefillMatchesOneRank) {
  CheckContextParallel(GetParam(), KvCacheDtype::kStorage);
}

TEST_P(ModelParallelTest, ContextParallelPrefillOverAnFp8CacheMatchesOneRank) {
  CheckContextParallel(GetParam(), KvCacheDtype::kFp8);
}

INSTANTIATE_TEST_SUITE_P(Plans, ModelParallelTest,
                         ::testing::Values(ParallelPlan{2, 1, 1}, ParallelPlan{2, 1, 2}, ParallelPlan{4, 1, 4},
                                           ParallelPlan{1, 2, 2}, ParallelPlan{1, 4, 4}, ParallelPlan{2, 2, 2},
                                           ParallelPlan{2, 2, 4}, ParallelPlan{1, 2, 1}),
                         [](const ::testing::TestParamInfo<ParallelPlan>& info) {
                           return absl::StrCat("tp", info.param.tp, "_dp", info.param.dp_attention, "_ep",
                                               info.param.ep);
                         });

}  // namespace
}  // namespace mlaserve
