// The HTTP front door. One event thread (epoll) accepts connections and reads
// each request whole -- its headers within one deadline, then its body within
// another -- before any thread is given to it, so a slow or idle client
// (slowloris, a slow body) costs a descriptor, never a thread. Whole requests
// go to one of two lanes of threads: the control lane serves the cheap GETs
// named in the options (/health, /metrics), which no overload reaches; the
// request lane serves the rest, and its waiting line is bounded: past it the
// gate answers 429 itself.
//
// Written by hand because the HTTP library Debian ships (cpp-httplib 0.11)
// gives every connection a pool thread from the moment it is accepted and
// bounds each read, not a request's whole arrival; HttpServer hands it the
// requests this gate has read whole.
#ifndef MLASERVE_COORDINATOR_API_CONNECTION_GATE_H_
#define MLASERVE_COORDINATOR_API_CONNECTION_GATE_H_

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace mlaserve {

struct GateOptions {
  size_t max_header_bytes = 64 << 10;  // request line and headers; 431 beyond
  size_t max_body_bytes = 8 << 20;     // 413 beyond, told by Content-Length or counted in chunks
  // From a request's first byte to the end of its headers; 408 after.
  absl::Duration header_timeout = absl::Seconds(10);
  // From the end of the headers to the body's last byte; 408 after.
  absl::Duration body_timeout = absl::Seconds(30);
  // A kept-alive connection with no request begun is closed after this.
  absl::Duration idle_timeout = absl::Seconds(30);
  // How long one write of a response may wait for the client to take bytes.
  absl::Duration write_timeout = absl::Seconds(10);
  // Connections open at once; one more is answered 503 and closed at accept.
  int max_connections = 8192;
  int request_threads = 128;
  // Whole requests waiting for a request thread; one more is answered 429.
  int max_waiting = 128;
  int control_threads = 2;
  // Targets (path, query excluded) of GETs the control lane serves.
  std::vector<std::string> control_paths;
  // The JSON body of the gate's own error responses.
  std::function<std::string(int http_status, const std::string& message)> error_body;
};

// One connection while a lane thread serves one request on it. Not thread-safe:
// one thread holds it at a time.
class GateConnection {
 public:
  explicit GateConnection(int fd) : fd_(fd) {}
  GateConnection(const GateConnection&) = delete;
  GateConnection& operator=(const GateConnection&) = delete;

  int fd() const { return fd_; }

  // Copies up to `size` bytes of the current request into `out`; 0 once the
  // request's last byte was read. Never reads the socket: the gate read the
  // whole request before a thread was given to it.
  size_t Read(char* out, size_t size);
  // Whether bytes of the current request are left to Read.
  bool HasRequestBytes() const { return read_ < request_end_; }

  // Sends all of `data`; false when the client is gone or took no bytes for
  // `write_timeout`.
  bool Write(const char* data, size_t size, absl::Duration write_timeout);
  // Waits up to `timeout` for room to write; false if the client is gone.
  bool WaitWritable(absl::Duration timeout) const;

 private:
  friend class ConnectionGate;

  const int fd_;
  std::string buffer_;      // bytes received and not yet served: the current request first
  size_t request_end_ = 0;  // the current request is buffer_[0, request_end_)
  size_t read_ = 0;         // how much of it Read has given
};

class ConnectionGate {
 public:
  // Serves the one request that `connection` holds, writing the response.
  // Returns whether the connection stays open for a next request.
  using Serve = std::function<bool(GateConnection& connection)>;

  // REQUIRES: options.error_body is set; the thread counts are at least 1.
  ConnectionGate(GateOptions options, Serve serve);
  ~ConnectionGate();
  ConnectionGate(const ConnectionGate&) = delete;
  ConnectionGate& operator=(const ConnectionGate&) = delete;

  // Binds host:port (port 0: an ephemeral one), starts the event thread and
  // the lanes, and returns the bound port once connections can be made.
  // REQUIRES: not started before.
  absl::StatusOr<int> Start(const std::string& host, int port);
  // The listening socket; -1 before Start and after Stop.
  int listening_fd() const { return listen_fd_; }

  // Waits up to `timeout` until no request is waiting for a thread or being
  // served; whether that came. REQUIRES: started.
  bool AwaitIdle(absl::Duration timeout);

  // Stops accepting; requests still waiting for a thread are answered 503;
  // waits for the ones being served to end (Serve must end them: the caller
  // tells its handlers to stop first), then closes every connection.
  // Idempotent.
  void Stop();

 private:
  struct Connection;
  class Lane;

  void EventLoop();
  void AcceptAll();
  void OnReadable(int fd);
  // Parses what a reading connection holds: dispatches a whole request,
  // answers a bad one, or waits for more bytes.
  void Advance(int fd);
  // One step of Advance; true when a request was answered here and the
  // connection, still reading, may hold the next.
  bool AdvanceOnce(int fd);
  // Hands the whole request to its lane; answers 429 (and returns true) when
  // the lane's waiting line is full.
  bool Dispatch(int fd);
  // Answers an error, closes the sending side and drops what the client still
  // sends until it closes or kLingerTime passes.
  void Refuse(int fd, int http_status, const std::string& message);
  // Refuse with 413: the body is over max_body_bytes.
  void RefuseBody(int fd);
  void Watch(int fd);
  void Close(int fd);
  void Wake();
  void ExpireDeadlines();
  void TakeBackReturned();
  // From a lane thread: the connection is free for its next request.
  void GiveBack(std::unique_ptr<Connection> connection);
  void CloseServed(std::unique_ptr<Connection> connection);
  std::string ErrorResponse(int http_status, const std::string& message, bool close) const;

  const GateOptions options_;
  const Serve serve_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;   // eventfd: a lane gave a connection back, or Stop
  int spare_fd_ = -1;  // kept to accept-and-close when descriptors run out
  std::atomic<bool> stopping_{false};
  std::atomic<int> open_connections_{0};
  std::unique_ptr<Lane> control_lane_;
  std::unique_ptr<Lane> request_lane_;
  std::thread event_thread_;
  // Only the event thread touches the table; the rest is behind Lane's and
  // returned_'s locks.
  std::vector<std::unique_ptr<Connection>> table_;  // by descriptor
  struct Returned;
  std::unique_ptr<Returned> returned_;
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_API_CONNECTION_GATE_H_
