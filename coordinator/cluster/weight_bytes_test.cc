#include "coordinator/cluster/weight_bytes.h"

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

// The tiny DeepSeek-V3 fixture's shapes: 3 layers (layer 0 dense), hidden 256, 8 heads.
ModelConfig Config() {
  absl::StatusOr<ModelConfig> c = LoadModelConfig("tests/testdata/tiny-deepseek-v3/config.json");
  EXPECT_TRUE(c.ok()) << c.status();
  // Block-quantized as DeepSeek's FP8 checkpoints are.
  c->fp8_block_rows = 128;
  c->fp8_block_cols = 128;
  return *c;
}

constexpr WeightFormat kFp8{.dense_bytes = 2, .keep_fp8 = true};

// An FP8 [n, k] projection: a byte per value and a float per row and 128 columns.
int64_t Fp8(int64_t n, int64_t k) { return n * k + n * ((k + 127) / 128) * 4; }

TEST(WeightBytesTest, UnquantizedIsTheParameterCountTimesTheElementSize) {
  const ModelConfig c = Config();
  for (ParallelPlan plan : {ParallelPlan{}, ParallelPlan{2, 1, 2}, ParallelPlan{2, 2, 4}}) {
    for (int g = 0; g < plan.group_size(); ++g) {
      const ShardLayout s = *MakeShardLayout(c, plan, g);
      EXPECT_EQ(ShardWeightBytes(c, s, {.dense_bytes = 4}), 4 * ShardParameterCount(c, s)) << plan.ToString();
      EXPECT_EQ(ShardWeightBytes(c, s, {.dense_bytes = 2}), 2 * ShardParameterCount(c, s)) << plan.ToString();
    }
  }
}

TEST(WeightBytesTest, Fp8WholeModelByHand) {
  const ModelConfig c = Config();
  const int64_t outside = (2 * 1024 + 1) * 256 * 2 + 256 * 2;  // embedding + zero row, LM head, final norm
  const int64_t attention = 2 * 256 * 2                         // two norms
                            + Fp8(96, 256) + 96 * 2             // q_a and its norm
                            + Fp8(8 * 32, 96) + Fp8(8 * 16, 96)  // q_b: nope and rope rows
                            + Fp8(64, 256) + Fp8(16, 256) + 64 * 2  // kv_a and its norm
                            + 2 * (8 * 32 * 64) * 2              // W_UK twice, bf16
                            + (8 * 32 * 64) * 2                  // W_UV, bf16
                            + Fp8(256, 8 * 32);                  // o_proj
  EXPECT_EQ(attention, 252096);
  const int64_t dense = Fp8(2 * 512, 256) + Fp8(256, 512);
  const int64_t expert = Fp8(2 * 64, 256) + Fp8(256, 64);
  const int64_t moe = 16 * 256 * 2 + 16 * 2 + 16 * expert + expert;  // router, bias, routed, shared
  EXPECT_EQ(outside + 3 * attention + dense + 2 * moe, 3968640);
  EXPECT_EQ(ShardWeightBytes(c, *MakeShardLayout(c, ParallelPlan{}, 0), kFp8), 3968640);
}

TEST(WeightBytesTest, Fp8ShardByHand) {
  const ModelConfig c = Config();
  // tp=2 ep=2, rank 0: 4 heads, half the dense inner dimension and of the
  // shared expert's, experts 0-7 whole, vocabulary rows 0-511.
  const ShardLayout s = *MakeShardLayout(c, {.tp = 2, .dp_attention = 1, .ep = 2}, 0);
  const int64_t outside = (2 * 512 + 1) * 256 * 2 + 256 * 2;
  const int64_t attention = 2 * 256 * 2 + Fp8(96, 256) + 96 * 2 + Fp8(4 * 32, 96) + Fp8(4 * 16, 96) + Fp8(64, 256) +
                            Fp8(16, 256) + 64 * 2 + 2 * (4 * 32 * 64) * 2 + (4 * 32 * 64) * 2 + Fp8(256, 4 * 32);
  const int64_t dense = Fp8(2 * 256, 256) + Fp8(256, 256);
  const int64_t moe = 16 * 256 * 2 + 16 * 2 + 8 * (Fp8(2 * 64, 256) + Fp8(256, 64)) + Fp8(2 * 32, 256) + Fp8(256, 32);
  EXPECT_EQ(outside + 3 * attention + dense + 2 * moe, 2065792);
  EXPECT_EQ(ShardWeightBytes(c, s, kFp8), 2065792);
}

TEST(WeightBytesTest, ScalesCoverAPartialColumnGroup) {
  ModelConfig c = Config();
  c.moe_intermediate_size = 192;  // the experts' down projection: 1.5 groups of columns
  c.n_routed_experts = 1;
  c.num_experts_per_tok = 1;
  c.n_group = 1;
  c.topk_method = TopkMethod::kGreedy;
  const ShardLayout s = *MakeShardLayout(c, ParallelPlan{}, 0);
  ModelConfig smaller = c;
  smaller.moe_intermediate_size = 128;
  const ShardLayout t = *MakeShardLayout(smaller, ParallelPlan{}, 0);
  // Per MoE layer, routed and shared: gate_up gains 128 rows (each with 2
  // scales), down 64 columns with a second scale per row.
  const int64_t per_expert = 128 * 256 + 128 * 2 * 4 + 256 * 64 + 256 * 4;
  EXPECT_EQ(ShardWeightBytes(c, s, kFp8) - ShardWeightBytes(smaller, t, kFp8), 2 * 2 * per_expert);
}

TEST(WeightBytesTest, ColumnSlicesStartingInsideAScaleGroupStayUnquantized) {
  const ModelConfig c = Config();
  // tp=4: rank 1's o_proj columns start at head 2 (column 64) and its slice
  // of the shared expert's down_proj at column 16; rank 0's at 0.
  const ParallelPlan plan{.tp = 4, .dp_attention = 1, .ep = 4};
  const ShardLayout first = *MakeShardLayout(c, plan, 0), second = *MakeShardLayout(c, plan, 1);
  const int64_t o_proj = 256 * 64 * 2 - Fp8(256, 64), shared_down = 256 * 16 * 2 - Fp8(256, 16);
  EXPECT_EQ(ShardWeightBytes(c, second, kFp8) - ShardWeightBytes(c, first, kFp8), 3 * o_proj + 2 * shared_down);
  // Quantized at load, both are FP8 (rows of 64 and 16 values).
  const WeightFormat quantized{.dense_bytes = 2, .keep_fp8 = true, .quantize_fp8 = true};
  EXPECT_EQ(ShardWeightBytes(c, second, quantized), ShardWeightBytes(c, first, quantized));
  // So is a bf16 checkpoint's every projection.
  ModelConfig bf16 = c;
  bf16.fp8_block_rows = bf16.fp8_block_cols = 0;
  EXPECT_EQ(ShardWeightBytes(bf16, *MakeShardLayout(bf16, ParallelPlan{}, 0), {.dense_bytes = 2, .quantize_fp8 = true}),
            3968640);
}

TEST(WeightBytesTest, WeightsDtypeChoice) {
  ModelConfig c = Config();
  EXPECT_TRUE(ChooseWeightFormat(c, "auto", true)->keep_fp8);
  EXPECT_FALSE(ChooseWeightFormat(c, "", true)->quantize_fp8);
  EXPECT_EQ(ChooseWeightFormat(c, "auto", true)->dense_bytes, 2);
  EXPECT_EQ(ChooseWeightFormat(c, "auto", false)->dense_bytes, 4);
  EXPECT_EQ(ChooseWeightFormat(c, "auto", true)->name(), "fp8");
  EXPECT_FALSE(ChooseWeightFormat(c, "bf16", true)->keep_fp8);
  EXPECT_EQ(ChooseWeightFormat(c, "bf16", true)->name(), "bf16");
  EXPECT_EQ(ChooseWeightFormat(c, "bf16", false)->name(), "f32");
  c.fp8_block_rows = c.fp8_block_cols = 0;  // a bf16 checkpoint
  EXPECT_EQ(ChooseWeightFormat(c, "auto", true)->name(), "bf16");
  EXPECT_TRUE(ChooseWeightFormat(c, "fp8", true)->quantize_fp8);
  EXPECT_EQ(ChooseWeightFormat(c, "int4", true).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mlaserve
