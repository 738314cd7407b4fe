#include "worker/kv_cache.h"

#include <set>

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

ModelConfig TinyConfig() {
  ModelConfig c;
  c.num_hidden_layers = 3;
  c.kv_lora_rank = 64;
  c.qk_rope_head_dim = 16;
  return c;
}

TEST(KvCacheTest, LayoutIsOneContiguousSpanPerBlock) {
  auto ops = NewCpuOps();
  auto cache = KvCache::Create(*ops, TinyConfig(), 10, 64);
  ASSERT_TRUE(cache.ok());
  EXPECT_EQ(cache->pool().shape, (std::vector<int64_t>{10, 3, 64, 80}));
  EXPECT_EQ(cache->bytes_per_block(), 3 * 64 * 80 * 4);
  EXPECT_EQ(KvBlockBytes(TinyConfig(), 64, ops->storage_dtype()), cache->bytes_per_block());
  EXPECT_EQ(KvBlockBytes(TinyConfig(), 64, DType::kBF16), 3 * 64 * 80 * 2);
}

TEST(KvCacheTest, Fp8RowsAreBytesOfTheirOwnWidth) {
  auto ops = NewCpuOps();
  auto cache = KvCache::Create(*ops, TinyConfig(), 10, 16, KvCacheDtype::kFp8);
  ASSERT_TRUE(cache.ok());
  // 64 e4m3, one float scale (padded to 16 bytes), 16 bf16: 112 bytes.
  EXPECT_EQ(cache->pool().dtype, DType::kU8);
  EXPECT_EQ(cache->pool().shape, (std::vector<int64_t>{10, 3, 16, 112}));
  EXPECT_EQ(cache->bytes_per_block(), 3 * 16 * 112);
  EXPECT_EQ(KvBlockBytes(TinyConfig(), 16, ops->storage_dtype(), KvCacheDtype::kFp8), cache->bytes_per_block());
  ModelConfig v3 = TinyConfig();
  v3.kv_lora_rank = 512;
  v3.qk_rope_head_dim = 64;
  EXPECT_EQ(KvBlockBytes(v3, 64, DType::kBF16, KvCacheDtype::kFp8), 3 * 64 * 656);
  EXPECT_EQ(ParseKvCacheDtype("fp8").value(), KvCacheDtype::kFp8);
  EXPECT_EQ(ParseKvCacheDtype("bf16").value(), KvCacheDtype::kStorage);
  EXPECT_EQ(ParseKvCacheDtype("int4").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvCacheTest, AllocateFreeAndExhaust) {
  auto ops = NewCpuOps();
  auto cache = KvCache::Create(*ops, TinyConfig(), 5, 16);
  ASSERT_TRUE(cache.ok());
  auto a = cache->Allocate(3);
  ASSERT_TRUE(a.ok());
  auto b = cache->Allocate(2);
  ASSERT_TRUE(b.ok());
  std::set<int32_t> all(a->begin(), a->end());
  all.insert(b->begin(), b->end());
  EXPECT_EQ(all.size(), 5u);
  EXPECT_EQ(cache->Allocate(1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(cache->Free(*a).ok());
  EXPECT_EQ(cache->num_free_blocks(), 3);
  EXPECT_EQ(cache->Free(*a).code(), absl::StatusCode::kFailedPrecondition);  // double free
  EXPECT_EQ(cache->Free({(*b)[0], (*b)[0]}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cache->num_free_blocks(), 3);
  EXPECT_EQ(cache->Free({99}).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(KvCacheTest, BadSizesAreErrors) {
  auto ops = NewCpuOps();
  EXPECT_FALSE(KvCache::Create(*ops, TinyConfig(), 0, 64).ok());
  EXPECT_FALSE(KvCache::Create(*ops, TinyConfig(), 4, 0).ok());
  EXPECT_EQ(BlocksFor(0, 64), 0);
  EXPECT_EQ(BlocksFor(64, 64), 1);
  EXPECT_EQ(BlocksFor(65, 64), 2);
}

}  // namespace
}  // namespace mlaserve
