#include "coordinator/api/connection_gate.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

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

namespace mlaserve {
namespace {

using ::testing::HasSubstr;

// One client socket, with blocking reads bounded by a deadline.
class Client {
 public:
  explicit Client(int port) : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~Client() { close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }
  bool Send(const std::string& bytes) { return send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()); }

  struct Response {
    int status = 0;  // 0: none came
    std::string head;
    std::string body;
  };
  // The next response (1xx ones skipped), read within `timeout`.
  Response Next(absl::Duration timeout = absl::Seconds(5)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      const size_t head_end = pending_.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        Response response;
        response.head = pending_.substr(0, head_end);
        absl::SimpleAtoi(response.head.substr(9, 3), &response.status);
        size_t length = 0;
        const size_t at = response.head.find("Content-Length: ");
        if (at != std::string::npos) absl::SimpleAtoi(response.head.substr(at + 16, response.head.find("\r\n", at) - at - 16), &length);
        if (pending_.size() >= head_end + 4 + length) {
          response.body = pending_.substr(head_end + 4, length);
          pending_.erase(0, head_end + 4 + length);
          if (response.status >= 100 && response.status < 200) continue;
          return response;
        }
      }
      if (!ReadSome(deadline)) return {};
    }
  }
  // Whether the server closed the connection within `timeout` (bytes still
  // coming before the close are dropped).
  bool ClosedWithin(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (ReadSome(deadline)) pending_.clear();
    return closed_;
  }

 private:
  bool ReadSome(absl::Time deadline) {
    const int64_t wait = absl::ToInt64Milliseconds(deadline - absl::Now());
    pollfd ready{fd_, POLLIN, 0};
    if (wait <= 0 || poll(&ready, 1, static_cast<int>(wait)) != 1) return false;
    char chunk[4096];
    const ssize_t n = recv(fd_, chunk, sizeof(chunk), 0);
    if (n <= 0) {
      closed_ = true;
      return false;
    }
    pending_.append(chunk, n);
    return true;
  }

  const int fd_;
  bool connected_ = false;
  bool closed_ = false;
  std::string pending_;
};

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
  Client client(port_);
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
    Client client(port_);
    ASSERT_TRUE(client.Send(c.request));
    const Client::Response response = client.Next();
    EXPECT_EQ(response.status, c.status) << c.request.substr(0, 80);
    EXPECT_THAT(response.body, HasSubstr(c.message)) << c.request.substr(0, 80);
    EXPECT_THAT(response.head, HasSubstr("Connection: close"));
    EXPECT_TRUE(client.ClosedWithin(absl::Seconds(3))) << c.request.substr(0, 80);
  }
  Client client(port_);
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
  std::vector<std::unique_ptr<Client>> slow;
  for (int i = 0; i < 40; ++i) {
    slow.push_back(std::make_unique<Client>(port_));
    ASSERT_TRUE(slow.back()->Send(i % 2 == 0 ? "GET / HTTP/1.1\r\nX-a: " : "POST /b HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"));
  }
  const absl::Time start = absl::Now();
  for (int tick = 0; tick < 3; ++tick) {
    for (size_t i = 0; i < slow.size(); i += 2) slow[i]->Send("a");
    // The one request thread is free for whole requests the whole time.
    Client client(port_);
    ASSERT_TRUE(client.Send(Post("/fast", "x")));
    EXPECT_EQ(client.Next(absl::Milliseconds(200)).status, 200) << "tick " << tick;
    absl::SleepFor(absl::Milliseconds(100));
  }
  for (size_t i = 0; i < slow.size(); ++i) {
    const Client::Response response = slow[i]->Next(absl::Seconds(3));
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
  std::vector<std::unique_ptr<Client>> blocked;
  for (int i = 0; i < 4; ++i) {  // two served (blocking), then two waiting
    blocked.push_back(std::make_unique<Client>(port_));
    ASSERT_TRUE(blocked.back()->Send(Post("/block", absl::StrCat(i))));
    absl::SleepFor(absl::Milliseconds(100));
  }
  Client extra(port_);
  ASSERT_TRUE(extra.Send(Post("/a", "over")));
  const Client::Response refused = extra.Next();
  EXPECT_EQ(refused.status, 429);
  EXPECT_THAT(refused.head, HasSubstr("Retry-After: 1"));
  EXPECT_THAT(refused.body, HasSubstr("capacity"));
  // The connection carries the next try.
  ASSERT_TRUE(extra.Send(Post("/a", "again")));
  EXPECT_EQ(extra.Next().status, 429);
  for (int i = 0; i < 20; ++i) {
    Client health(port_);
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
  std::vector<std::unique_ptr<Client>> open;
  for (int i = 0; i < 3; ++i) {
    open.push_back(std::make_unique<Client>(port_));
    ASSERT_TRUE(open.back()->Send(Get("/a")));
    EXPECT_EQ(open.back()->Next().status, 200);
  }
  Client over(port_);
  EXPECT_EQ(over.Next().status, 503);
  EXPECT_TRUE(over.ClosedWithin(absl::Seconds(1)));
  for (auto& client : open) EXPECT_TRUE(client->ClosedWithin(absl::Seconds(2))) << "idle past the timeout";
  Client after(port_);
  ASSERT_TRUE(after.Send(Get("/a")));
  EXPECT_EQ(after.Next().status, 200);
}

TEST_F(ConnectionGateTest, StopAnswersWaitingRequestsAndClosesEverything) {
  GateOptions options;
  options.request_threads = 1;
  Start(options);
  Client served(port_);
  ASSERT_TRUE(served.Send(Post("/block", "a")));
  absl::SleepFor(absl::Milliseconds(100));
  Client waiting(port_);
  ASSERT_TRUE(waiting.Send(Post("/a", "b")));
  Client slow(port_);
  ASSERT_TRUE(slow.Send("GET /a HTTP/1.1\r\n"));
  absl::SleepFor(absl::Milliseconds(100));
  std::thread stop([this] { gate_->Stop(); });
  const Client::Response answer = waiting.Next();
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
