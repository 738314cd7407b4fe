#include "worker/memory_profile.h"

#include "gtest/gtest.h"
#include "worker/kv_cache.h"

namespace mlaserve {
namespace {

constexpr char kTinyModel[] = "tests/testdata/tiny-deepseek-v3";

TEST(MemoryProfileTest, RunsTheLargestStepOnAScratchCache) {
  auto ops = NewCpuOps();
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(kTinyModel, *ops);
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t block = KvBlockBytes((*model)->config(), 16, ops->storage_dtype());
  // 48 tokens over 4 sequences: a prefill of 45 (3 blocks) and three decodes (a block each).
  absl::StatusOr<int64_t> scratch = RunLargestStep(**model, *ops, 16, KvCacheDtype::kStorage,
                                                    {.max_tokens = 48, .max_sequences = 4});
  ASSERT_TRUE(scratch.ok()) << scratch.status();
  EXPECT_EQ(*scratch, 6 * block);
  // Fewer tokens than sequences: 7 sequences, a prefill of 2 (1 block) and 6 decodes.
  scratch = RunLargestStep(**model, *ops, 16, KvCacheDtype::kStorage, {.max_tokens = 8, .max_sequences = 64});
  ASSERT_TRUE(scratch.ok()) << scratch.status();
  EXPECT_EQ(*scratch, 7 * block);
  // An FP8 cache's scratch is as many blocks of its own, smaller, size.
  const int64_t fp8_block = KvBlockBytes((*model)->config(), 16, ops->storage_dtype(), KvCacheDtype::kFp8);
  EXPECT_LT(fp8_block, block);
  scratch = RunLargestStep(**model, *ops, 16, KvCacheDtype::kFp8, {.max_tokens = 48, .max_sequences = 4});
  ASSERT_TRUE(scratch.ok()) << scratch.status();
  EXPECT_EQ(*scratch, 6 * fp8_block);
}

}  // namespace
}  // namespace mlaserve
