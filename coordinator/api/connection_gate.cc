#include "coordinator/api/connection_gate.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace mlaserve {
namespace {

// How often deadlines are looked at: a slow client is cut off at most this
// late. Looking at every connection 5 times a second costs little next to
// what the connections cost.
constexpr absl::Duration kDeadlineScan = absl::Milliseconds(200);
// After an error answer the rest of the request is read and dropped, so that
// the client gets the answer rather than a reset, for at most this long.
constexpr absl::Duration kLingerTime = absl::Seconds(2);
constexpr size_t kReadChunk = 64 << 10;
constexpr int kAcceptsPerWake = 256;

const char* Reason(int http_status) {
  switch (http_status) {
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

// Sends what the socket takes now; the gate's own answers are small enough
// for an empty send buffer.
void SendNow(int fd, const std::string& bytes) {
  if (send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
    // The client is gone: there is nobody to tell.
  }
}

// What the headers of a request say about its framing.
struct Framing {
  bool chunked = false;
  size_t content_length = 0;
  bool expects_continue = false;
  bool control = false;  // a GET the control lane serves
};

// The end of the header block: the first empty line, ended by LF or CRLF,
// looked for from `from` on (bytes before it were looked at already).
std::optional<size_t> HeaderEnd(absl::string_view bytes, size_t from = 0) {
  for (size_t i = bytes.find('\n', from); i != absl::string_view::npos; i = bytes.find('\n', i + 1)) {
    if (i + 1 < bytes.size() && bytes[i + 1] == '\n') return i + 2;
    if (i + 2 < bytes.size() && bytes[i + 1] == '\r' && bytes[i + 2] == '\n') return i + 3;
  }
  return std::nullopt;
}

// Reads the request line and the framing headers; a message on error.
absl::StatusOr<Framing> ParseHead(absl::string_view head, const std::vector<std::string>& control_paths) {
  std::vector<absl::string_view> lines = absl::StrSplit(head, '\n');
  std::vector<absl::string_view> request_line = absl::StrSplit(absl::StripAsciiWhitespace(lines[0]), ' ');
  if (request_line.size() != 3 || !absl::StartsWith(request_line[2], "HTTP/1.")) {
    return absl::InvalidArgumentError("the request line is not an HTTP/1.x request line");
  }
  Framing framing;
  if (request_line[0] == "GET") {
    const absl::string_view path = request_line[1].substr(0, request_line[1].find('?'));
    framing.control = std::find(control_paths.begin(), control_paths.end(), path) != control_paths.end();
  }
  std::optional<size_t> content_length;
  bool has_transfer_encoding = false;
  for (size_t i = 1; i < lines.size(); ++i) {
    const absl::string_view line = absl::StripAsciiWhitespace(lines[i]);
    if (line.empty()) continue;
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) return absl::InvalidArgumentError("a header line has no colon");
    const absl::string_view name = line.substr(0, colon);
    const absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
    if (absl::EqualsIgnoreCase(name, "Content-Length")) {
      size_t length;
      if (!absl::SimpleAtoi(value, &length) || (content_length.has_value() && *content_length != length)) {
        return absl::InvalidArgumentError("Content-Length is not one number");
      }
      content_length = length;
    } else if (absl::EqualsIgnoreCase(name, "Transfer-Encoding")) {
      // Only chunked framing is understood; anything else cannot be delimited.
      if (!absl::EqualsIgnoreCase(value, "chunked")) {
        return absl::UnimplementedError(absl::StrCat("Transfer-Encoding ", value, " is not supported"));
      }
      has_transfer_encoding = true;
    } else if (absl::EqualsIgnoreCase(name, "Expect")) {
      framing.expects_continue = absl::EqualsIgnoreCase(value, "100-continue");
    }
  }
  // Both framings at once are how requests are smuggled past proxies.
  if (has_transfer_encoding && content_length.has_value()) {
    return absl::InvalidArgumentError("both Content-Length and Transfer-Encoding");
  }
  framing.chunked = has_transfer_encoding;
  framing.content_length = content_length.value_or(0);
  return framing;
}

}  // namespace

size_t GateConnection::Read(char* out, size_t size) {
  const size_t n = std::min(size, request_end_ - read_);
  std::memcpy(out, buffer_.data() + read_, n);
  read_ += n;
  return n;
}

bool GateConnection::WaitWritable(absl::Duration timeout) const {
  pollfd ready{fd_, POLLOUT, 0};
  const int n = poll(&ready, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  return n == 1 && (ready.revents & (POLLERR | POLLHUP | POLLNVAL)) == 0;
}

bool GateConnection::Write(const char* data, size_t size, absl::Duration write_timeout) {
  while (size > 0) {
    const ssize_t n = send(fd_, data, size, MSG_NOSIGNAL);
    if (n > 0) {
      data += n;
      size -= static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!WaitWritable(write_timeout)) return false;
    } else {
      return false;
    }
  }
  return true;
}

// A connection held by the event thread, and what it knows of the request in
// its buffer.
struct ConnectionGate::Connection : GateConnection {
  enum class Phase {
    kIdle,       // no byte of a next request yet
    kHeaders,    // reading the request line and headers
    kBody,       // reading the body
    kLingering,  // answered with an error; dropping input until the client closes
  };
  using GateConnection::GateConnection;

  // Drops the request served or refused and waits for the next, which may
  // be in the buffer already (pipelined).
  void AwaitNextRequest(absl::Time idle_deadline) {
    buffer_.erase(0, request_end_);
    request_end_ = 0;
    read_ = 0;
    header_scan = 0;
    phase = Phase::kIdle;
    deadline = idle_deadline;
  }

  Phase phase = Phase::kIdle;
  absl::Time deadline;
  Framing framing;
  // Where the search for the end of the headers goes on as bytes arrive, so
  // that a request sent a byte at a time costs no rescans of what came.
  size_t header_scan = 0;
  size_t header_end = 0;
  // Chunked bodies are scanned as they arrive: where the next chunk-size line
  // starts and how many data bytes came before it.
  size_t chunk_scan = 0;
  size_t chunk_bytes = 0;
};

// A pool of threads serving whole requests, with a bounded waiting line.
class ConnectionGate::Lane {
 public:
  Lane(ConnectionGate& gate, int threads, size_t max_waiting) : gate_(gate), max_waiting_(max_waiting) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }

  // False when the waiting line is full; the connection is then given back.
  bool Push(std::unique_ptr<Connection>& connection) {
    absl::MutexLock lock(&mu_);
    if (waiting_.size() >= max_waiting_ || stopping_) return false;
    waiting_.push_back(std::move(connection));
    return true;
  }

  // Waits until no request waits or is served, or `deadline`; whether none is.
  bool AwaitIdle(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithDeadline(
        absl::Condition(+[](Lane* lane) { return lane->waiting_.empty() && lane->serving_ == 0; }, this), deadline);
  }

  // Answers the waiting requests 503, lets the served ones end, joins.
  void Stop() {
    std::deque<std::unique_ptr<Connection>> waiting;
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      waiting.swap(waiting_);
    }
    for (std::unique_ptr<Connection>& connection : waiting) {
      SendNow(connection->fd(), gate_.ErrorResponse(503, "the server is stopping", /*close=*/true));
      gate_.CloseServed(std::move(connection));
    }
    for (std::thread& thread : threads_) thread.join();
  }

 private:
  void Run() {
    while (true) {
      std::unique_ptr<Connection> connection;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](Lane* lane) { return lane->stopping_ || !lane->waiting_.empty(); }, this));
        if (waiting_.empty()) return;
        connection = std::move(waiting_.front());
        waiting_.pop_front();
        ++serving_;
      }
      const bool keep = gate_.serve_(*connection);
      if (keep && !gate_.stopping_) {
        gate_.GiveBack(std::move(connection));
      } else {
        gate_.CloseServed(std::move(connection));
      }
      absl::MutexLock lock(&mu_);
      --serving_;
    }
  }

  ConnectionGate& gate_;
  const size_t max_waiting_;
  absl::Mutex mu_;
  std::deque<std::unique_ptr<Connection>> waiting_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int serving_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> threads_;
};

struct ConnectionGate::Returned {
  absl::Mutex mu;
  std::vector<std::unique_ptr<Connection>> connections ABSL_GUARDED_BY(mu);
};

ConnectionGate::ConnectionGate(GateOptions options, Serve serve)
    : options_(std::move(options)), serve_(std::move(serve)), returned_(std::make_unique<Returned>()) {}

ConnectionGate::~ConnectionGate() { Stop(); }

absl::StatusOr<int> ConnectionGate::Start(const std::string& host, int port) {
  if (listen_fd_ >= 0 || stopping_) return absl::FailedPreconditionError("the gate was already started");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (const int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found); rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  int fd = -1;
  for (addrinfo* address = found; address != nullptr && fd < 0; address = address->ai_next) {
    fd = socket(address->ai_family, address->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, address->ai_protocol);
    if (fd < 0) continue;
    const int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (bind(fd, address->ai_addr, address->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ":", port, ": ", strerror(errno)));
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
  const int bound_port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                                     : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  listen_fd_ = fd;
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  for (int watched : {listen_fd_, wake_fd_}) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = watched;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, watched, &event);
  }
  control_lane_ = std::make_unique<Lane>(*this, options_.control_threads, /*max_waiting=*/1024);
  request_lane_ = std::make_unique<Lane>(*this, options_.request_threads, options_.max_waiting);
  event_thread_ = std::thread([this] { EventLoop(); });
  return bound_port;
}

void ConnectionGate::Stop() {
  if (!event_thread_.joinable() || stopping_.exchange(true)) return;
  Wake();
  event_thread_.join();
  control_lane_->Stop();
  request_lane_->Stop();
  for (std::unique_ptr<Connection>& connection : table_) {
    if (connection != nullptr) Close(connection->fd());
  }
  TakeBackReturned();  // connections served while the lanes stopped: closed
  for (int fd : {listen_fd_, epoll_fd_, wake_fd_, spare_fd_}) close(fd);
  listen_fd_ = -1;
}

bool ConnectionGate::AwaitIdle(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  return request_lane_->AwaitIdle(deadline) && control_lane_->AwaitIdle(deadline);
}

void ConnectionGate::EventLoop() {
  constexpr int kEvents = 256;
  epoll_event events[kEvents];
  absl::Time next_scan = absl::Now() + kDeadlineScan;
  while (!stopping_) {
    const int wait_ms = static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(next_scan - absl::Now())));
    const int n = epoll_wait(epoll_fd_, events, kEvents, wait_ms);
    for (int i = 0; i < n && !stopping_; ++i) {
      const int fd = events[i].data.fd;
      if (fd == listen_fd_) {
        AcceptAll();
      } else if (fd == wake_fd_) {
        uint64_t count;
        if (read(wake_fd_, &count, sizeof(count)) < 0) {
          // EAGAIN: another wake already took the count.
        }
        TakeBackReturned();
      } else if (static_cast<size_t>(fd) < table_.size() && table_[fd] != nullptr) {
        OnReadable(fd);  // else closed or handed to a lane earlier in this batch
      }
    }
    if (absl::Now() >= next_scan) {
      ExpireDeadlines();
      next_scan = absl::Now() + kDeadlineScan;
    }
  }
}

void ConnectionGate::AcceptAll() {
  for (int i = 0; i < kAcceptsPerWake; ++i) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) {
        // Out of descriptors the pending connection would stay readable for
        // ever: the spare one makes room to take it and close it.
        close(spare_fd_);
        const int dropped = accept(listen_fd_, nullptr, nullptr);
        if (dropped >= 0) close(dropped);
        spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
        continue;
      }
      return;  // EAGAIN: none left; anything else: the next wake tries again
    }
    if (open_connections_.load() >= options_.max_connections) {
      SendNow(fd, ErrorResponse(503, "too many connections: try again later", /*close=*/true));
      close(fd);
      continue;
    }
    const int yes = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
    ++open_connections_;
    if (static_cast<size_t>(fd) >= table_.size()) table_.resize(fd + 1);
    table_[fd] = std::make_unique<Connection>(fd);
    table_[fd]->deadline = absl::Now() + options_.idle_timeout;
    Watch(fd);
  }
}

void ConnectionGate::OnReadable(int fd) {
  Connection& connection = *table_[fd];
  char chunk[kReadChunk];
  // Reads what is there, but never far past one whole request: the buffer
  // holds at most the limits plus one chunk.
  const size_t cap = options_.max_header_bytes + options_.max_body_bytes + kReadChunk;
  while (connection.buffer_.size() < cap) {
    const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
    if (n > 0) {
      if (connection.phase != Connection::Phase::kLingering) connection.buffer_.append(chunk, n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    return Close(fd);  // the client closed or the connection broke
  }
  if (connection.phase != Connection::Phase::kLingering) Advance(fd);
}

void ConnectionGate::Advance(int fd) {
  while (AdvanceOnce(fd)) {
  }
}

bool ConnectionGate::AdvanceOnce(int fd) {
  Connection& connection = *table_[fd];
  std::string& buffer = connection.buffer_;
  if (connection.phase == Connection::Phase::kIdle) {
    // Blank lines before a request are allowed (RFC 9112, 2.2).
    buffer.erase(0, std::min(buffer.find_first_not_of("\r\n"), buffer.size()));
    if (buffer.empty()) return false;
    connection.phase = Connection::Phase::kHeaders;
    connection.deadline = absl::Now() + options_.header_timeout;
  }
  if (connection.phase == Connection::Phase::kHeaders) {
    const std::optional<size_t> end = HeaderEnd(buffer, connection.header_scan);
    // The empty line that may end them can start two bytes back.
    connection.header_scan = buffer.size() < 2 ? 0 : buffer.size() - 2;
    if (end.has_value() ? *end > options_.max_header_bytes : buffer.size() > options_.max_header_bytes) {
      Refuse(fd, 431, absl::StrCat("the request line and headers exceed ", options_.max_header_bytes, " bytes"));
      return false;
    }
    if (!end.has_value()) return false;
    absl::StatusOr<Framing> framing = ParseHead(absl::string_view(buffer).substr(0, *end), options_.control_paths);
    if (!framing.ok()) {
      const int status = absl::IsUnimplemented(framing.status()) ? 501 : 400;
      Refuse(fd, status, std::string(framing.status().message()));
      return false;
    }
    if (!framing->chunked && framing->content_length > options_.max_body_bytes) {
      RefuseBody(fd);
      return false;
    }
    connection.framing = *framing;
    connection.header_end = *end;
    connection.chunk_scan = *end;
    connection.chunk_bytes = 0;
    connection.phase = Connection::Phase::kBody;
    connection.deadline = absl::Now() + options_.body_timeout;
    if (framing->expects_continue && (framing->chunked || framing->content_length > 0)) {
      SendNow(fd, "HTTP/1.1 100 Continue\r\n\r\n");
    }
  }
  // kBody: is the whole body here?
  size_t request_end = 0;
  if (!connection.framing.chunked) {
    request_end = connection.header_end + connection.framing.content_length;
    if (buffer.size() < request_end) return false;
  } else {
    // chunk = size-line CRLF data CRLF; the last has size 0 and is followed
    // by trailer lines and an empty line (RFC 9112, 7.1).
    while (true) {
      const size_t line_end = buffer.find('\n', connection.chunk_scan);
      if (line_end == std::string::npos) {
        if (buffer.size() - connection.chunk_scan > 1024) Refuse(fd, 400, "a chunk-size line is too long");
        return false;
      }
      absl::string_view size_line(buffer.data() + connection.chunk_scan, line_end - connection.chunk_scan);
      size_line = absl::StripAsciiWhitespace(size_line.substr(0, size_line.find(';')));
      size_t size;
      if (size_line.empty() || size_line.size() > 15 || !absl::SimpleHexAtoi(size_line, &size)) {
        Refuse(fd, 400, "a chunk size is not a hexadecimal number");
        return false;
      }
      if (size == 0) {
        const std::optional<size_t> trailer_end = HeaderEnd(absl::string_view(buffer).substr(line_end));
        if (!trailer_end.has_value()) return false;
        request_end = line_end + *trailer_end;
        break;
      }
      if (size > options_.max_body_bytes - connection.chunk_bytes) {
        RefuseBody(fd);
        return false;
      }
      const size_t next = line_end + 1 + size + 2;  // data and its CRLF
      if (buffer.size() < next) return false;
      if (buffer.compare(next - 2, 2, "\r\n") != 0) {
        Refuse(fd, 400, "a chunk does not end with CRLF");
        return false;
      }
      connection.chunk_bytes += size;
      connection.chunk_scan = next;
    }
  }
  connection.request_end_ = request_end;
  connection.read_ = 0;
  return Dispatch(fd);
}

bool ConnectionGate::Dispatch(int fd) {
  std::unique_ptr<Connection> connection = std::move(table_[fd]);
  Lane& lane = connection->framing.control ? *control_lane_ : *request_lane_;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  if (lane.Push(connection)) return false;
  // The waiting line is full. The request was read whole, so the connection
  // can carry the client's next try.
  SendNow(fd, ErrorResponse(429, "the server is at capacity: try again later", /*close=*/false));
  connection->AwaitNextRequest(absl::Now() + options_.idle_timeout);
  table_[fd] = std::move(connection);
  Watch(fd);
  return true;  // a pipelined request may follow
}

void ConnectionGate::Refuse(int fd, int http_status, const std::string& message) {
  Connection& connection = *table_[fd];
  SendNow(fd, ErrorResponse(http_status, message, /*close=*/true));
  shutdown(fd, SHUT_WR);
  connection.phase = Connection::Phase::kLingering;
  connection.buffer_.clear();
  connection.deadline = absl::Now() + kLingerTime;
}

void ConnectionGate::RefuseBody(int fd) {
  Refuse(fd, 413, absl::StrCat("the request body exceeds ", options_.max_body_bytes, " bytes"));
}

void ConnectionGate::Watch(int fd) {
  epoll_event event{};
  event.events = EPOLLIN | EPOLLRDHUP;
  event.data.fd = fd;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event);
}

void ConnectionGate::Close(int fd) {
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  close(fd);
  table_[fd].reset();
  --open_connections_;
}

void ConnectionGate::ExpireDeadlines() {
  const absl::Time now = absl::Now();
  for (std::unique_ptr<Connection>& connection : table_) {
    if (connection == nullptr || now < connection->deadline) continue;
    const int fd = connection->fd();
    switch (connection->phase) {
      case Connection::Phase::kIdle:
      case Connection::Phase::kLingering:
        Close(fd);
        break;
      case Connection::Phase::kHeaders:
        Refuse(fd, 408, absl::StrCat("the request headers took longer than ", absl::FormatDuration(options_.header_timeout)));
        break;
      case Connection::Phase::kBody:
        Refuse(fd, 408, absl::StrCat("the request body took longer than ", absl::FormatDuration(options_.body_timeout)));
        break;
    }
  }
}

void ConnectionGate::GiveBack(std::unique_ptr<Connection> connection) {
  {
    absl::MutexLock lock(&returned_->mu);
    returned_->connections.push_back(std::move(connection));
  }
  Wake();
}

void ConnectionGate::Wake() {
  const uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) < 0) {
    // Only a counter at its maximum refuses, and that wakes the loop anyway.
  }
}

void ConnectionGate::CloseServed(std::unique_ptr<Connection> connection) {
  close(connection->fd());
  --open_connections_;
}

void ConnectionGate::TakeBackReturned() {
  std::vector<std::unique_ptr<Connection>> returned;
  {
    absl::MutexLock lock(&returned_->mu);
    returned.swap(returned_->connections);
  }
  for (std::unique_ptr<Connection>& connection : returned) {
    if (stopping_) {
      CloseServed(std::move(connection));
      continue;
    }
    const int fd = connection->fd();
    connection->AwaitNextRequest(absl::Now() + options_.idle_timeout);
    table_[fd] = std::move(connection);
    Watch(fd);
    Advance(fd);  // a pipelined request may be here already
  }
}

std::string ConnectionGate::ErrorResponse(int http_status, const std::string& message, bool close) const {
  const std::string body = options_.error_body(http_status, message);
  return absl::StrCat("HTTP/1.1 ", http_status, " ", Reason(http_status),
                      "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(),
                      http_status == 429 || http_status == 503 ? "\r\nRetry-After: 1" : "",
                      close ? "\r\nConnection: close" : "", "\r\n\r\n", body);
}

}  // namespace mlaserve
