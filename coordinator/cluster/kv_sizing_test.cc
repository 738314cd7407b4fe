#include "coordinator/cluster/kv_sizing.h"

#include <vector>

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

constexpr int64_t kGiB = int64_t{1} << 30;
constexpr int64_t kBlock = 64 * 61 * 576 * 2;  // DeepSeek-V3's latent KV, 64 tokens in bf16

// A worker alone on an 80 GiB GPU holding `used` GiB, the rest free.
RankMemoryReport OnH100(int32_t id, int64_t used) {
  return {.worker_id = id, .capacity_bytes = 80 * kGiB, .used_bytes = used * kGiB, .free_bytes = (80 - used) * kGiB};
}

TEST(KvSizingTest, TheRankWithLeastRoomSizesTheGroup) {
  const std::vector<RankMemoryReport> ranks = {OnH100(0, 60), OnH100(1, 62), OnH100(2, 61)};
  absl::StatusOr<KvSizing> sizing = SizeKvPool(ranks, {.gpu_memory_utilization = 0.9, .bytes_per_block = kBlock});
  ASSERT_TRUE(sizing.ok()) << sizing.status();
  EXPECT_EQ(sizing->source, KvSource::kMemory);
  EXPECT_EQ(sizing->limiting_worker, 1);
  const int64_t room = 72 * kGiB - 62 * kGiB;  // 0.9 x 80 GiB less what worker 1 holds
  EXPECT_EQ(sizing->limiting_room_bytes, room);
  EXPECT_EQ(sizing->num_blocks, room / kBlock);
  EXPECT_NE(sizing->ToString().find("worker 1"), std::string::npos);
}

TEST(KvSizingTest, UtilizationIsTheShareOfTheWholeGpu) {
  const std::vector<RankMemoryReport> ranks = {OnH100(0, 20)};
  for (double utilization : {0.5, 0.9, 1.0}) {
    absl::StatusOr<KvSizing> sizing =
        SizeKvPool(ranks, {.gpu_memory_utilization = utilization, .bytes_per_block = kBlock});
    ASSERT_TRUE(sizing.ok()) << sizing.status();
    EXPECT_EQ(sizing->limiting_room_bytes, static_cast<int64_t>(80 * kGiB * utilization) - 20 * kGiB);
  }
  EXPECT_EQ(SizeKvPool(ranks, {.gpu_memory_utilization = 0, .bytes_per_block = kBlock}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SizeKvPool(ranks, {.gpu_memory_utilization = 1.5, .bytes_per_block = kBlock}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KvSizingTest, WorkersSharingAGpuSplitItAndNeverExceedItsFreeMemory) {
  // Two workers on one GPU, 10 GiB each, with 55 GiB still free: each may
  // use 36 GiB, so 26 GiB of KV each.
  RankMemoryReport shared{.worker_id = 4, .capacity_bytes = 80 * kGiB, .used_bytes = 10 * kGiB,
                          .free_bytes = 55 * kGiB, .sharers = 2};
  EXPECT_EQ(KvRoomBytes(shared, 0.9), 36 * kGiB - 10 * kGiB);
  // Something else on the GPU leaves 20 GiB free: 10 GiB each.
  shared.free_bytes = 20 * kGiB;
  EXPECT_EQ(KvRoomBytes(shared, 0.9), 10 * kGiB);
}

TEST(KvSizingTest, ExplicitBlocksOverrideAndUnmeasuredRanksGetTheDefault) {
  const std::vector<RankMemoryReport> ranks = {OnH100(0, 79)};  // no room, but the user says
  absl::StatusOr<KvSizing> sizing =
      SizeKvPool(ranks, {.kv_blocks = 1000, .gpu_memory_utilization = 0.9, .bytes_per_block = kBlock});
  ASSERT_TRUE(sizing.ok()) << sizing.status();
  EXPECT_EQ(sizing->num_blocks, 1000);
  EXPECT_EQ(sizing->source, KvSource::kExplicit);

  const std::vector<RankMemoryReport> cpu = {{.worker_id = 0}, OnH100(1, 10)};
  sizing = SizeKvPool(cpu, {.default_blocks = 256, .bytes_per_block = kBlock});
  ASSERT_TRUE(sizing.ok()) << sizing.status();
  EXPECT_EQ(sizing->num_blocks, 256);
  EXPECT_EQ(sizing->source, KvSource::kDefault);
}

TEST(KvSizingTest, NoRoomLeftIsAClearError) {
  const std::vector<RankMemoryReport> ranks = {OnH100(0, 30), OnH100(7, 75)};
  const absl::Status status = SizeKvPool(ranks, {.gpu_memory_utilization = 0.9, .bytes_per_block = kBlock}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("worker 7 has no memory left for the KV cache"), std::string::npos) << status;
  EXPECT_NE(status.message().find("0.9 x 80.0 GiB = 72.0 GiB and holds 75.0 GiB"), std::string::npos) << status;
  EXPECT_NE(status.message().find("--gpu_memory_utilization"), std::string::npos) << status;
  // Room for less than a block is no room either.
  const std::vector<RankMemoryReport> almost = {
      {.worker_id = 2, .capacity_bytes = 100 * kBlock, .used_bytes = 90 * kBlock - 1, .free_bytes = 10 * kBlock}};
  EXPECT_EQ(SizeKvPool(almost, {.gpu_memory_utilization = 0.9, .bytes_per_block = kBlock}).status().code(),
            absl::StatusCode::kResourceExhausted);
}

// Decode context parallelism: auto takes it exactly when one request of the
// model's whole context would not fit a replica otherwise and the group can
// spread its KV; on refuses, naming each lack, where it cannot.
TEST(DecodeContextParallelTest, AutoWhenAWholeContextDoesNotFitAndOnlyWhereItCan) {
  const DecodeContextParallelQuery fits{.tp = 2, .attends_in_parts = true, .mixed_role = true,
                                        .replica_tokens = 16384, .max_context = 16384};
  EXPECT_FALSE(*UseDecodeContextParallel(DecodeContextParallel::kAuto, fits));
  DecodeContextParallelQuery tight = fits;
  tight.replica_tokens = 16383;
  EXPECT_TRUE(*UseDecodeContextParallel(DecodeContextParallel::kAuto, tight));
  EXPECT_TRUE(*UseDecodeContextParallel(DecodeContextParallel::kOn, fits));
  EXPECT_FALSE(*UseDecodeContextParallel(DecodeContextParallel::kOff, tight));
  for (auto lack : {&DecodeContextParallelQuery::attends_in_parts, &DecodeContextParallelQuery::mixed_role}) {
    DecodeContextParallelQuery q = tight;
    q.*lack = false;
    EXPECT_FALSE(*UseDecodeContextParallel(DecodeContextParallel::kAuto, q));
    EXPECT_EQ(UseDecodeContextParallel(DecodeContextParallel::kOn, q).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  DecodeContextParallelQuery one_shard = tight;
  one_shard.tp = 1;
  one_shard.attends_in_parts = false;
  EXPECT_FALSE(*UseDecodeContextParallel(DecodeContextParallel::kAuto, one_shard));
  const absl::Status refused = UseDecodeContextParallel(DecodeContextParallel::kOn, one_shard).status();
  EXPECT_NE(refused.message().find("tp is 1"), absl::string_view::npos) << refused;
  EXPECT_NE(refused.message().find("attend in parts"), absl::string_view::npos) << refused;
  EXPECT_EQ(ParseDecodeContextParallel("sometimes").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseDecodeContextParallel("auto"), DecodeContextParallel::kAuto);
}

}  // namespace
}  // namespace mlaserve
