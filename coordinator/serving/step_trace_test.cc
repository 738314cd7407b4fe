#include "coordinator/serving/step_trace.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace mlaserve {
namespace {

std::string TempPath(const std::string& name) { return ::testing::TempDir() + "/" + name; }

TEST(StepShapeTest, CountsTokensAndAttendedPairsPerReplica) {
  StepShape shape;
  // Replica 0: a decode at position 9 (attends 10 positions) and a 4-token
  // chunk from 8 (attends 9 + 10 + 11 + 12 = 42).
  shape.AddReplica({{.begin = 9, .num_tokens = 1}, {.begin = 8, .num_tokens = 4}});
  // Replica 1: one decode at position 99.
  shape.AddReplica({{.begin = 99, .num_tokens = 1}});
  EXPECT_EQ(shape.sequences, 3);
  EXPECT_EQ(shape.tokens, 6);
  EXPECT_EQ(shape.prefill_tokens, 4);
  EXPECT_EQ(shape.max_replica_tokens, 5);
  EXPECT_EQ(shape.max_replica_attended, 100);
}

TEST(StepTraceTest, ReadsBackWhatItWrote) {
  const std::string path = TempPath("trace.csv");
  {
    auto trace = StepTrace::Create(path);
    ASSERT_TRUE(trace.ok()) << trace.status();
    (*trace)->Record({.group = 3, .workers = 2, .shape = {5, 70, 64, 40, 900}, .seconds = 0.0125});
    (*trace)->Record({.group = 0, .workers = 1, .shape = {1, 1, 0, 1, 12}, .seconds = 0.002});
  }
  auto samples = ReadStepTrace(path);
  ASSERT_TRUE(samples.ok()) << samples.status();
  ASSERT_EQ(samples->size(), 2u);
  EXPECT_EQ((*samples)[0].group, 3);
  EXPECT_EQ((*samples)[0].workers, 2);
  EXPECT_EQ((*samples)[0].shape.tokens, 70);
  EXPECT_EQ((*samples)[0].shape.max_replica_attended, 900);
  EXPECT_DOUBLE_EQ((*samples)[0].seconds, 0.0125);
  EXPECT_EQ((*samples)[1].shape.sequences, 1);
}

TEST(StepTraceTest, NamesTheLineThatDoesNotParse) {
  const std::string path = TempPath("bad.csv");
  std::ofstream(path) << "0,1,1,1,0,1,1,0.5\n0,1,x,1,0,1,1,0.5\n";
  auto samples = ReadStepTrace(path);
  ASSERT_FALSE(samples.ok());
  EXPECT_NE(samples.status().message().find(":2:"), std::string::npos) << samples.status();
  EXPECT_FALSE(ReadStepTrace(TempPath("missing.csv")).ok());
}

}  // namespace
}  // namespace mlaserve
