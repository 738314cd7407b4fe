#include "coordinator/api/connection_gate.h"


#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "coordinator/api/raw_http_client.h"

namespace mlaserve {
namespace {

using ::testing::HasSubstr;


std::string Get(const std::string& path) { return absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: x\r\n\r\n"); }
std::string Post(const std::string& path, const std::string& body) {
  return absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: x\r\nContent-Length: ", body.size(), "\r\n\r\n", body);
}

class ConnectionGateTest : public ::testing::Test {
 protected:
  ~ConnectionGateTest() override {
    if (!release_.HasBeenNotified()) release_.Notify();
    if (gate_ != nullptr) gate_->Stop();
  }

  // Serves each request with 200 and the request's bytes as they reached
  // the thread; a request for /block waits until release_.
  void Start(GateOptions options) {
    options.control_paths = {"/health"};
    options.error_body = [](int status, const std::string& message) {
      return absl::StrCat(R"({"error": {"code": )", status, R"(, "message": ")", message, R"("}})");
    };
    gate_ = std::make_unique<ConnectionGate>(options, [this](GateConnection& connection) {
      std::string request;
      char chunk[7];  // small reads: the request comes in several
      for (size_t n; (n = connection.Read(chunk, sizeof(chunk))) > 0;) request.append(chunk, n);
      if (absl::StrContains(request, " /block ")) release_.WaitForNotification();
      const std::string response =
          absl::StrCat("HTTP/1.1 200 OK\r\nContent-Length: ", request.size(), "\r\n\r\n", request);
      return connection.Write(response.data(), response.size(), absl::Seconds(5));
    });
    absl::StatusOr<int> port = gate_->Start("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.status();
    port_ = *port;
  }

  std::unique_ptr<ConnectionGate> gate_;
  absl::Notification release_;
  int port_ = 0;
};

TEST_F(ConnectionGateTest, ServesWholeRequestsOneByOneOnAConnection) {
  Start(GateOptions{});
  RawHttpClient client(port_);
  ASSERT_TRUE(client.connected());
  // Pipelined: both requests in one write; each reaches Serve alone and whole.
  const std::string first = Post("/a", "0123456789");
  const std::string second = Get("/b?x=1");
  ASSERT_TRUE(client.Send(first + second));
  EXPECT_EQ(client.Next().body, first);
  EXPECT_EQ(client.Next().body, second);
  // One byte at a time.
  const std::string third = Post("/c", "slow body");
  for (char byte : third) {
    ASSERT_TRUE(client.Send(std::string(1, byte)));
    absl::SleepFor(absl::Microseconds(300));
  }
  EXPECT_EQ(client.Next().body, third);
  // Chunked, with an extension and a trailer.
  const std::string chunked =
      "POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\n"
      "Checksum: 1\r\n\r\n";
  ASSERT_TRUE(client.Send(chunked));
  EXPECT_EQ(client.Next().body, chunked);
  // 100-continue: the gate says continue, then the body comes.
  const std::string expecting = "POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
  ASSERT_TRUE(client.Send(expecting));
  ASSERT_TRUE(client.Send("abc"));
  EXPECT_EQ(client.Next().body, expecting + "abc");
}

TEST_F(ConnectionGateTest, AnswersBadRequestsItselfAndCloses) {
  GateOptions options;
  options.max_header_bytes = 512;
  options.max_body_bytes = 100;
  Start(options);
  const struct {
    std::string request;
    int status;
    std::string message;
  } cases[] = {
      {Post("/a", std::string(101, 'x')), 413, "exceeds 100 bytes"},
      {"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + std::string(64, 'x') + "\r\n40\r\n", 413,
       "exceeds 100 bytes"},
      {"GET /a HTTP/1.1\r\nX: " + std::string(600, 'x') + "\r\n\r\n", 431, "exceed 512 bytes"},
      {"GET /a HTTP/1.1\r\nX: " + std::string(600, 'x'), 431, "exceed 512 bytes"},
      {"POST /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"},
      {"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy", 400, "Content-Length"},
      {"POST /a HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "both"},
      {"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "gzip"},
      {"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "hexadecimal"},
      {"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n", 400, "CRLF"},
      {"HELLO\r\n\r\n", 400, "request line"},
      {"GET /a HTTP/1.1\r\nno colon here\r\n\r\n", 400, "colon"},
  };
  for (const auto& c : cases) {
    RawHttpClient client(port_);
    ASSERT_TRUE(client.Send(c.request));
    const RawHttpClient::Response response = client.Next();
    EXPECT_EQ(response.status, c.status) << c.request.substr(0, 80);
    EXPECT_THAT(response.body, HasSubstr(c.message)) << c.request.substr(0, 80);
    EXPECT_THAT(response.head, HasSubstr("Connection: close"));
    EXPECT_TRUE(client.ClosedWithin(absl::Seconds(3))) << c.request.substr(0, 80);
  }
  RawHttpClient client(port_);
  ASSERT_TRUE(client.Send(Get("/still/serving")));
  EXPECT_EQ(client.Next().status, 200);
}

TEST_F(ConnectionGateTest, SlowClientsCostNoThreadAndAreCutOff) {
  GateOptions options;
  options.request_threads = 1;
  options.header_timeout = absl::Milliseconds(600);
  options.body_timeout = absl::Milliseconds(600);
  Start(options);
  // Slowloris: headers a byte at a time, never ending; and a body that stops.
  std::vector<std::unique_ptr<RawHttpClient>> slow;
  for (int i = 0; i < 40; ++i) {
    slow.push_back(std::make_unique<RawHttpClient>(port_));
    ASSERT_TRUE(slow.back()->Send(i % 2 == 0 ? "GET / HTTP/1.1\r\nX-a: " : "POST /b HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"));
  }
  const absl::Time start = absl::Now();
  for (int tick = 0; tick < 3; ++tick) {
    for (size_t i = 0; i < slow.size(); i += 2) slow[i]->Send("a");
    // The one request thread is free for whole requests the whole time.
    RawHttpClient client(port_);
    ASSERT_TRUE(client.Send(Post("/fast", "x")));
    EXPECT_EQ(client.Next(absl::Milliseconds(200)).status, 200) << "tick " << tick;
    absl::SleepFor(absl::Milliseconds(100));
  }
  for (size_t i = 0; i < slow.size(); ++i) {
    const RawHttpClient::Response response = slow[i]->Next(absl::Seconds(3));
    EXPECT_EQ(response.status, 408) << i;
    EXPECT_THAT(response.body, HasSubstr(i % 2 == 0 ? "headers took longer" : "body took longer"));
    EXPECT_TRUE(slow[i]->ClosedWithin(absl::Seconds(3))) << i;
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(2)) << "cut off within the timeout and one deadline scan";
}

TEST_F(ConnectionGateTest, FullLineGets429AndControlPathsStillServe) {
  GateOptions options;
  options.request_threads = 2;
  options.max_waiting = 2;
  Start(options);
  std::vector<std::unique_ptr<RawHttpClient>> blocked;
  for (int i = 0; i < 4; ++i) {  // two served (blocking), then two waiting
    blocked.push_back(std::make_unique<RawHttpClient>(port_));
    ASSERT_TRUE(blocked.back()->Send(Post("/block", absl::StrCat(i))));
    absl::SleepFor(absl::Milliseconds(100));
  }
  RawHttpClient extra(port_);
  ASSERT_TRUE(extra.Send(Post("/a", "over")));
  const RawHttpClient::Response refused = extra.Next();
  EXPECT_EQ(refused.status, 429);
  EXPECT_THAT(refused.head, HasSubstr("Retry-After: 1"));
  EXPECT_THAT(refused.body, HasSubstr("capacity"));
  // The connection carries the next try.
  ASSERT_TRUE(extra.Send(Post("/a", "again")));
  EXPECT_EQ(extra.Next().status, 429);
  for (int i = 0; i < 20; ++i) {
    RawHttpClient health(port_);
    ASSERT_TRUE(health.Send(Get("/health?verbose=1")));
    EXPECT_EQ(health.Next(absl::Milliseconds(500)).status, 200) << i;
  }
  release_.Notify();
  for (auto& client : blocked) EXPECT_EQ(client->Next().status, 200);
  ASSERT_TRUE(extra.Send(Post("/a", "now")));
  EXPECT_EQ(extra.Next().status, 200);
}

TEST_F(ConnectionGateTest, ConnectionsPastTheLimitGet503AndIdleOnesClose) {
  GateOptions options;
  options.max_connections = 3;
  options.idle_timeout = absl::Milliseconds(500);
  Start(options);
  std::vector<std::unique_ptr<RawHttpClient>> open;
  for (int i = 0; i < 3; ++i) {
    open.push_back(std::make_unique<RawHttpClient>(port_));
    ASSERT_TRUE(open.back()->Send(Get("/a")));
    EXPECT_EQ(open.back()->Next().status, 200);
  }
  RawHttpClient over(port_);
  EXPECT_EQ(over.Next().status, 503);
  EXPECT_TRUE(over.ClosedWithin(absl::Seconds(1)));
  for (auto& client : open) EXPECT_TRUE(client->ClosedWithin(absl::Seconds(2))) << "idle past the timeout";
  RawHttpClient after(port_);
  ASSERT_TRUE(after.Send(Get("/a")));
  EXPECT_EQ(after.Next().status, 200);
}

TEST_F(ConnectionGateTest, StopAnswersWaitingRequestsAndClosesEverything) {
  GateOptions options;
  options.request_threads = 1;
  Start(options);
  RawHttpClient served(port_);
  ASSERT_TRUE(served.Send(Post("/block", "a")));
  absl::SleepFor(absl::Milliseconds(100));
  RawHttpClient waiting(port_);
  ASSERT_TRUE(waiting.Send(Post("/a", "b")));
  RawHttpClient slow(port_);
  ASSERT_TRUE(slow.Send("GET /a HTTP/1.1\r\n"));
  absl::SleepFor(absl::Milliseconds(100));
  std::thread stop([this] { gate_->Stop(); });
  const RawHttpClient::Response answer = waiting.Next();
  release_.Notify();  // Serve ends the one being served
  stop.join();
  EXPECT_EQ(answer.status, 503);
  EXPECT_EQ(served.Next().status, 200);
  EXPECT_TRUE(served.ClosedWithin(absl::Seconds(1)));
  EXPECT_TRUE(slow.ClosedWithin(absl::Seconds(1)));
  EXPECT_EQ(gate_->listening_fd(), -1);
}

}  // namespace
}  // namespace mlaserve
