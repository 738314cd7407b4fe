#include "worker/attention_form.h"

#include <algorithm>

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

ModelConfig DeepSeekDims(int64_t heads) {
  ModelConfig c;
  c.num_attention_heads = heads;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  return c;
}

TEST(AttentionFormTest, DecodeTakesTheAbsorbedFormAndLongChunksTheExpanded) {
  const ModelConfig c = DeepSeekDims(128);
  for (int64_t heads : {16, 128}) {
    for (int64_t context : {100, 4096, 131072}) {
      EXPECT_FALSE(ExpandedIsCheaper(c, heads, 1, context)) << heads << " heads, " << context;
      EXPECT_FALSE(ExpandedIsCheaper(c, heads, 8, context)) << heads << " heads, " << context;
    }
    for (int64_t context : {4096, 32768, 131072}) {
      EXPECT_TRUE(ExpandedIsCheaper(c, heads, 4096, context)) << heads << " heads, " << context;
      EXPECT_TRUE(ExpandedIsCheaper(c, heads, 1024, context)) << heads << " heads, " << context;
    }
  }
}

// Where mla_prefill_bench found the two forms' times crossing on an H100
// (docs/perf.md, 2026-12-07): a 32K context, 16 heads expanded at once or
// 128 heads in groups of 43.
TEST(AttentionFormTest, CrossesWhereTheKernelsMeasuredIt) {
  const ModelConfig c = DeepSeekDims(128);
  EXPECT_FALSE(ExpandedIsCheaper(c, 16, 256, 32768));
  EXPECT_TRUE(ExpandedIsCheaper(c, 16, 512, 32768));
  EXPECT_FALSE(ExpandedIsCheaper(c, 43, 128, 32768));
  EXPECT_TRUE(ExpandedIsCheaper(c, 43, 256, 32768));
}

TEST(AttentionFormTest, OneThresholdOfChunkTokensPerContext) {
  // More new tokens over the same keys only favour the expanded form more.
  const ModelConfig c = DeepSeekDims(16);
  for (int64_t heads : {1, 16, 64}) {
    for (int64_t context : {2048, 65536}) {
      bool expanded = false;
      for (int64_t tokens = 1; tokens <= 2048; ++tokens) {
        const bool now = ExpandedIsCheaper(c, heads, tokens, context);
        EXPECT_TRUE(now || !expanded) << tokens << " of " << context << ", " << heads << " heads";
        expanded = now;
      }
      // One head fills an eighth of the GPU's SMs with 2,048 queries: it stays absorbed.
      EXPECT_EQ(expanded, heads > 1) << context << ", " << heads << " heads";
    }
  }
}

TEST(AttentionFormTest, GroupsOfHeadsKeepTheScratchWithinItsBound) {
  const ModelConfig c = DeepSeekDims(128);
  constexpr int64_t kBf16 = 2;
  EXPECT_EQ(ExpandedGroupHeads(c, 128, 4096, kBf16, kDefaultExpandedScratchBytes), 128);
  for (int64_t heads : {1, 16, 128}) {
    for (int64_t context : {1, 1000, 32768, 131072, 600000}) {
      const int64_t group = ExpandedGroupHeads(c, heads, context, kBf16, kDefaultExpandedScratchBytes);
      ASSERT_GT(group, 0) << heads << " heads, " << context;
      ASSERT_LE(group, heads);
      const int64_t scratch = context * kBf16 * (c.latent_dim() + group * (c.qk_nope_head_dim + c.v_head_dim));
      EXPECT_LE(scratch, kDefaultExpandedScratchBytes) << heads << " heads, " << context;
      // As few groups as the bound allows, as even as they can be.
      const int64_t groups = (heads + group - 1) / group;
      if (groups > 1) {
        const int64_t more = context * kBf16 *
                             (c.latent_dim() + ((heads + groups - 2) / (groups - 1)) * (c.qk_nope_head_dim + c.v_head_dim));
        EXPECT_GT(more, kDefaultExpandedScratchBytes) << heads << " heads, " << context;
      }
      EXPECT_GE(heads - (groups - 1) * group, 1) << "an empty last group";
    }
  }
  // Not even one head's K and V beside the latent rows.
  EXPECT_EQ(ExpandedGroupHeads(c, 16, 4 << 20, kBf16, kDefaultExpandedScratchBytes), 0);
}

}  // namespace
}  // namespace mlaserve
