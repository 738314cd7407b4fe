// Groups re-form (issue 13, part 2): a cluster of two one-worker engine groups
// loses a group -- its worker killed, or hung past the heartbeat timeout --
// says so on /health, and returns to both groups once a replacement registers
// or the hung worker resumes (it is forgotten, registers again and is loaded
// afresh), serving the same greedy text as before.
#include <signal.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/local_cluster.h"
#include "tests/serving_client.h"

namespace mlaserve {
namespace {

constexpr char kRequest[] = R"({"prompt": "Latent attention", "max_tokens": 8, "temperature": 0})";

std::string Complete(const LocalCluster& cluster) {
  const HttpResult result = cluster.Post("/v1/completions", kRequest);
  EXPECT_EQ(result.status, 200) << result.body;
  const nlohmann::json body = result.json();
  return body.contains("choices") ? body["choices"][0]["text"].get<std::string>() : "";
}

// Waits up to `timeout` for /health to report `groups` serving groups; how long it took.
absl::StatusOr<absl::Duration> AwaitServingGroups(const LocalCluster& cluster, int groups, absl::Duration timeout) {
  const absl::Time start = absl::Now();
  nlohmann::json health;
  while (absl::Now() - start < timeout) {
    health = cluster.Get("/health").json();
    if (health.is_object() && health.value("serving_groups", -1) == groups) return absl::Now() - start;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat("health stayed ", health.dump()));
}

std::unique_ptr<LocalCluster> TwoGroups() {
  auto cluster = LocalCluster::Start(kTinyModelDir, 2,
                                     {"--tp=1", "--dp_attention=1", "--ep=1", "--heartbeat_timeout_s=1"});
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  return cluster.ok() ? *std::move(cluster) : nullptr;
}

TEST(RecoveryTest, AReplacementWorkerRestoresAKilledGroup) {
  std::unique_ptr<LocalCluster> cluster = TwoGroups();
  ASSERT_NE(cluster, nullptr);
  ASSERT_TRUE(AwaitServingGroups(*cluster, 2, absl::Seconds(10)).ok());
  const std::string before = Complete(*cluster);
  ASSERT_FALSE(before.empty());
  ASSERT_TRUE(cluster->KillWorker(0));
  const absl::StatusOr<absl::Duration> noticed = AwaitServingGroups(*cluster, 1, absl::Seconds(10));
  ASSERT_TRUE(noticed.ok()) << noticed.status();
  const nlohmann::json degraded = cluster->Get("/health").json();
  EXPECT_EQ(degraded["status"], "degraded") << degraded.dump();
  EXPECT_EQ(degraded["planned_groups"], 2);
  EXPECT_EQ(Complete(*cluster), before) << "the surviving group";
  ASSERT_TRUE(cluster->StartWorker().ok());
  const absl::StatusOr<absl::Duration> restored = AwaitServingGroups(*cluster, 2, absl::Seconds(30));
  ASSERT_TRUE(restored.ok()) << restored.status();
  std::cout << "death noticed in " << absl::FormatDuration(*noticed) << "; two groups again "
            << absl::FormatDuration(*restored) << " after the replacement started" << std::endl;
  EXPECT_EQ(cluster->Get("/health").json()["status"], "ok");
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Complete(*cluster), before) << "request " << i;
}

TEST(RecoveryTest, AHungWorkerRejoinsWhenItResumes) {
  std::unique_ptr<LocalCluster> cluster = TwoGroups();
  ASSERT_NE(cluster, nullptr);
  ASSERT_TRUE(AwaitServingGroups(*cluster, 2, absl::Seconds(10)).ok());
  const std::string before = Complete(*cluster);
  ASSERT_TRUE(cluster->SignalWorker(1, SIGSTOP));
  const absl::StatusOr<absl::Duration> noticed = AwaitServingGroups(*cluster, 1, absl::Seconds(10));
  ASSERT_TRUE(noticed.ok()) << noticed.status();
  EXPECT_EQ(Complete(*cluster), before);
  ASSERT_TRUE(cluster->SignalWorker(1, SIGCONT));
  const absl::StatusOr<absl::Duration> restored = AwaitServingGroups(*cluster, 2, absl::Seconds(30));
  ASSERT_TRUE(restored.ok()) << restored.status();
  std::cout << "hang noticed in " << absl::FormatDuration(*noticed) << "; two groups again "
            << absl::FormatDuration(*restored) << " after it resumed" << std::endl;
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Complete(*cluster), before) << "request " << i;
}

}  // namespace
}  // namespace mlaserve
