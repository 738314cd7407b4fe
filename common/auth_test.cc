#include "common/auth.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace mlaserve {
namespace {

std::string WriteFile(const std::string& text) {
  char path[] = "/tmp/auth_test_XXXXXX";
  const int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  close(fd);
  std::ofstream(path) << text;
  return path;
}

TEST(KeySetTest, FileHoldsOneKeyPerLine) {
  const std::string path = WriteFile("\n  sk-first \n\nsk-second\r\n");
  auto keys = KeySet::FromFile(path);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_FALSE(keys->open());
  EXPECT_EQ(keys->presented(), "sk-first");
  EXPECT_TRUE(keys->Admits("Bearer sk-first"));
  EXPECT_TRUE(keys->Admits("bearer sk-second"));
  EXPECT_TRUE(keys->Admits("BEARER  sk-second "));
  EXPECT_FALSE(keys->Admits("Bearer sk-firs"));
  EXPECT_FALSE(keys->Admits("Bearer sk-first-and-more"));
  EXPECT_FALSE(keys->Admits("sk-first"));
  EXPECT_FALSE(keys->Admits("Basic sk-first"));
  EXPECT_FALSE(keys->Admits("Bearer "));
  EXPECT_FALSE(keys->Admits(""));
  std::remove(path.c_str());
}

TEST(KeySetTest, BadFilesAreRefusedByName) {
  const auto missing = KeySet::FromFile("/nonexistent/keys");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/keys"), std::string::npos);
  const std::string blank = WriteFile(" \n\n");
  EXPECT_EQ(KeySet::FromFile(blank).status().code(), absl::StatusCode::kInvalidArgument);
  std::remove(blank.c_str());
}

TEST(KeySetTest, NoFileMeansOpen) {
  auto keys = KeySet::FromFile("");
  ASSERT_TRUE(keys.ok());
  EXPECT_TRUE(keys->open());
  EXPECT_EQ(keys->presented(), "");
  EXPECT_TRUE(keys->Admits(""));
  EXPECT_TRUE(keys->Admits("Bearer anything"));
}

TEST(ExposureTest, OnlyLoopbackMayBeOpen) {
  for (const char* host : {"127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"}) {
    EXPECT_TRUE(IsLoopback(host)) << host;
    EXPECT_TRUE(CheckExposure("x", host, false, false, "--key").ok()) << host;
  }
  for (const char* host : {"0.0.0.0", "10.0.0.2", "::", "[::]", "example.com", "128.0.0.1"}) {
    EXPECT_FALSE(IsLoopback(host)) << host;
    const absl::Status refused = CheckExposure("the HTTP API", host, false, false, "--api_key_file");
    EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << host;
    EXPECT_NE(refused.message().find("--api_key_file"), std::string::npos);
    EXPECT_TRUE(CheckExposure("x", host, true, false, "--key").ok()) << host;
    EXPECT_TRUE(CheckExposure("x", host, false, true, "--key").ok()) << host;
  }
}

}  // namespace
}  // namespace mlaserve
