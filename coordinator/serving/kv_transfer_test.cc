#include "coordinator/serving/kv_transfer.h"

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

WorkerInfo Worker(const std::string& device, const std::string& gpu_uuid) {
  WorkerInfo w;
  w.device = device;
  w.gpu_uuid = gpu_uuid;
  return w;
}

TEST(KvTransferTest, GpusLinkDistinctGpusOnly) {
  for (KvLinks links : {KvLinks::kGpus, KvLinks::kAll}) {
    EXPECT_TRUE(UsesLink(Worker("cuda:0", "aa"), Worker("cuda:1", "bb"), links));
    EXPECT_TRUE(UsesLink(Worker("cuda", "aa"), Worker("cuda", "bb"), links));  // one GPU each on two hosts
    EXPECT_FALSE(UsesLink(Worker("cuda", "aa"), Worker("cuda:0", "aa"), links));  // two workers sharing a GPU
    EXPECT_FALSE(UsesLink(Worker("cpu", ""), Worker("cuda", "aa"), links));  // NCCL and Gloo do not meet
    EXPECT_FALSE(UsesLink(Worker("cuda", "aa"), Worker("cpu", ""), links));
  }
}

TEST(KvTransferTest, CpusLinkWhenAllPairsDo) {
  EXPECT_FALSE(UsesLink(Worker("cpu", ""), Worker("cpu", ""), KvLinks::kGpus));
  EXPECT_TRUE(UsesLink(Worker("cpu", ""), Worker("cpu", ""), KvLinks::kAll));
}

TEST(KvTransferTest, ParsesTheLinksFlag) {
  EXPECT_EQ(*ParseKvLinks("gpus"), KvLinks::kGpus);
  EXPECT_EQ(*ParseKvLinks("all"), KvLinks::kAll);
  EXPECT_EQ(ParseKvLinks("nccl").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mlaserve
