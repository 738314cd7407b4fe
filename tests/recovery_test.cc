// Groups re-form (issue 13, parts 2 and 3): a cluster of two one-worker
// engine groups loses a group -- its worker killed, or hung past the heartbeat
// timeout -- says so on /health, and returns to both groups once a
// replacement registers or the hung worker resumes (it is forgotten, registers
// again and is loaded afresh); a coordinator told to stop finishes what is in
// flight first, and a restarted one gets its workers back, which keep the
// weights they hold.
// Each serves the same greedy text as before.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include <httplib.h>

#include <memory>
#include <string>
#include <thread>

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

// Requests running on a group whose worker is killed go on in the other group,
// recomputed from what their clients have seen: every one ends well, with the
// text an undisturbed run gives.
TEST(RecoveryTest, RequestsOfAKilledGroupFinishElsewhereUnchanged) {
  std::unique_ptr<LocalCluster> cluster = TwoGroups();
  ASSERT_NE(cluster, nullptr);
  ASSERT_TRUE(AwaitServingGroups(*cluster, 2, absl::Seconds(10)).ok());
  const std::vector<std::string> prompts = {"Latent attention", "Mixture of experts", "Paged caches",
                                            "Prefix sharing", "Expert parallel", "Tensor parallel"};
  auto body = [](const std::string& prompt) {
    return nlohmann::json{{"prompt", prompt}, {"max_tokens", 400}, {"temperature", 0}}.dump();
  };
  std::vector<std::string> undisturbed;
  for (const std::string& prompt : prompts) {
    const HttpResult result = cluster->Post("/v1/completions", body(prompt));
    ASSERT_EQ(result.status, 200) << result.body;
    undisturbed.push_back(result.json()["choices"][0]["text"]);
  }
  std::vector<HttpResult> results(prompts.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i) {
    clients.emplace_back([&, i] { results[i] = cluster->Post("/v1/completions", body(prompts[i])); });
  }
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_TRUE(cluster->KillWorker(0));
  for (std::thread& client : clients) client.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(results[i].status, 200) << "request " << i << ": " << results[i].body;
    EXPECT_EQ(results[i].json()["choices"][0]["text"], undisturbed[i]) << "request " << i;
  }
  EXPECT_GT(cluster->Metric("mlaserve_sequences_moved_total", "reason=\"failover\""), 0)
      << "no request was running on the killed group";
  EXPECT_EQ(cluster->Metric("mlaserve_kv_blocks_used"), 0);
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

TEST(RecoveryTest, ACoordinatorStopsGracefullyAndWorkersRejoinTheNext) {
  const int http_port = FreePort(), grpc_port = FreePort(), internal_port = FreePort();
  const std::string secret = absl::StrCat("/tmp/recovery_test_secret_", getpid());
  std::ofstream(secret) << "restart-test-secret\n";
  // A copy of the model whose weights are cut short once the workers hold
  // them: loading them again would fail, so the workers must keep theirs.
  const std::filesystem::path model = absl::StrCat("/tmp/recovery_test_model_", getpid());
  std::filesystem::copy(kTinyModelDir, model);
  const std::vector<std::string> coordinator = {"coordinator/coordinator",
                                                "--model=" + model.string(),
                                                absl::StrCat("--http_port=", http_port),
                                                absl::StrCat("--grpc_port=", grpc_port),
                                                absl::StrCat("--internal_port=", internal_port),
                                                "--cluster_secret_file=" + secret,
                                                "--workers=2",
                                                "--tp=1",
                                                "--dp_attention=1",
                                                "--ep=1",
                                                "--heartbeat_timeout_s=1"};
  const std::vector<std::string> worker = {"worker/worker", absl::StrCat("--coordinator=127.0.0.1:", internal_port),
                                           "--cluster_secret_file=" + secret, "--device=cpu",
                                           "--coordinator_timeout_s=1"};
  // The cluster's binaries from Bazel's runfiles, started directly: the
  // launcher would stop the workers with the coordinator. One OpenMP thread
  // each, as the launcher gives two workers on two cores: more spin against
  // each other.
  setenv("OMP_NUM_THREADS", "1", /*overwrite=*/0);
  ChildProcess first(coordinator);
  ChildProcess worker_a(worker), worker_b(worker);
  httplib::Client client("127.0.0.1", http_port);
  client.set_read_timeout(60, 0);
  auto serving_groups = [&]() {
    auto health = client.Get("/health");
    if (!health || health->status != 200) return -1;
    return nlohmann::json::parse(health->body, nullptr, false).value("serving_groups", -1);
  };
  auto complete = [&](const std::string& request) {
    httplib::Client client("127.0.0.1", http_port);
    client.set_read_timeout(60, 0);
    auto result = client.Post("/v1/completions", request, "application/json");
    if (!result || result->status != 200) return std::string();
    return nlohmann::json::parse(result->body)["choices"][0]["text"].get<std::string>();
  };
  auto await_groups = [&](int groups, absl::Duration timeout) {
    const absl::Time start = absl::Now();
    while (absl::Now() - start < timeout) {
      if (serving_groups() == groups) return absl::Now() - start;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return absl::InfiniteDuration();
  };
  ASSERT_LT(await_groups(2, absl::Seconds(60)), absl::InfiniteDuration());
  const std::string before = complete(kRequest);
  ASSERT_FALSE(before.empty());
  std::filesystem::resize_file(model / "model.safetensors", 1000);

  // SIGTERM under load: the requests in flight finish unchanged, new ones get
  // 503 (and /health too, for load balancers), and the process exits 0.
  std::vector<std::string> long_requests, undisturbed;
  for (int i = 0; i < 4; ++i) {
    long_requests.push_back(absl::StrCat(R"({"prompt": "Drain )", i, R"(", "max_tokens": 100, "temperature": 0})"));
    undisturbed.push_back(complete(long_requests.back()));
  }
  std::vector<std::string> drained(long_requests.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < long_requests.size(); ++i) {
    clients.emplace_back([&, i] { drained[i] = complete(long_requests[i]); });
  }
  absl::SleepFor(absl::Milliseconds(200));
  first.Signal(SIGTERM);
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(client.Post("/v1/completions", kRequest, "application/json")->status, 503);
  EXPECT_EQ(client.Get("/health")->status, 503);
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(drained, undisturbed);
  EXPECT_EQ(first.Wait(), 0);

  // SIGKILL: what was in flight is lost with the connection; the workers
  // register again with the next coordinator.
  ChildProcess second(coordinator);
  ASSERT_LT(await_groups(2, absl::Seconds(60)), absl::InfiniteDuration());
  second.Stop(SIGKILL);
  const absl::Time restart = absl::Now();
  ChildProcess third(coordinator);
  const absl::Duration back = await_groups(2, absl::Seconds(60));
  ASSERT_LT(back, absl::InfiniteDuration()) << "the workers did not come back to the new coordinator";
  std::cout << "restarted coordinator serving both groups " << absl::FormatDuration(absl::Now() - restart)
            << " after it started" << std::endl;
  for (int i = 0; i < 3; ++i) EXPECT_EQ(complete(kRequest), before) << "request " << i;
  std::remove(secret.c_str());
  std::filesystem::remove_all(model);
}

}  // namespace
}  // namespace mlaserve
