// For tests of the HTTP front end: a bare TCP client that sends bytes as
// given (partial requests, pipelined ones, clients that leave mid-response)
// and reads responses with deadlines.
#ifndef MLASERVE_COORDINATOR_API_RAW_HTTP_CLIENT_H_
#define MLASERVE_COORDINATOR_API_RAW_HTTP_CLIENT_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace mlaserve {

class RawHttpClient {
 public:
  // Connects to 127.0.0.1:`port`; connected() says whether it did.
  explicit RawHttpClient(int port) : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~RawHttpClient() { Close(); }
  RawHttpClient(const RawHttpClient&) = delete;
  RawHttpClient& operator=(const RawHttpClient&) = delete;

  bool connected() const { return connected_; }

  // Whether all of `bytes` went out.
  bool Send(const std::string& bytes) {
    return send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  // A JSON POST of `body` to `path`.
  bool Post(const std::string& path, const std::string& body) {
    return Send(absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n",
                             "Content-Length: ", body.size(), "\r\n\r\n", body));
  }

  struct Response {
    int status = 0;  // 0: none came
    std::string head;
    std::string body;
  };
  // The next response with a Content-Length body (1xx ones skipped), read
  // within `timeout`.
  Response Next(absl::Duration timeout = absl::Seconds(5)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      const size_t head_end = received_.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        Response response;
        response.head = received_.substr(0, head_end);
        absl::SimpleAtoi(response.head.substr(9, 3), &response.status);
        size_t length = 0;
        if (const size_t at = response.head.find("Content-Length: "); at != std::string::npos) {
          absl::SimpleAtoi(response.head.substr(at + 16, response.head.find("\r\n", at) - at - 16), &length);
        }
        if (received_.size() >= head_end + 4 + length) {
          response.body = received_.substr(head_end + 4, length);
          received_.erase(0, head_end + 4 + length);
          if (response.status >= 100 && response.status < 200) continue;
          return response;
        }
      }
      if (!ReadSome(deadline)) return {};
    }
  }
  // Reads until `needle` has arrived; false on timeout or end of stream.
  bool ReadUntil(const std::string& needle, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (received_.find(needle) == std::string::npos) {
      if (!ReadSome(deadline)) return false;
    }
    return true;
  }
  // Whether the server closed the connection within `timeout` (what still
  // comes before the close is dropped).
  bool ClosedWithin(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (ReadSome(deadline)) received_.clear();
    return closed_;
  }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  // False on timeout or end of stream (then closed_).
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
    received_.append(chunk, n);
    return true;
  }

  int fd_;
  bool connected_ = false;
  bool closed_ = false;
  std::string received_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_API_RAW_HTTP_CLIENT_H_
