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

TEST(KvTransferTest, NcclLinksDistinctGpusOnly) {
  EXPECT_TRUE(UsesNcclLink(Worker("cuda:0", "aa"), Worker("cuda:1", "bb")));
  EXPECT_TRUE(UsesNcclLink(Worker("cuda", "aa"), Worker("cuda", "bb")));  // one GPU each on two hosts
  EXPECT_FALSE(UsesNcclLink(Worker("cuda", "aa"), Worker("cuda:0", "aa")));  // two workers sharing a GPU
  EXPECT_FALSE(UsesNcclLink(Worker("cpu", ""), Worker("cuda", "aa")));
  EXPECT_FALSE(UsesNcclLink(Worker("cpu", ""), Worker("cpu", "")));
}

}  // namespace
}  // namespace mlaserve
