// The OpenAI-compatible HTTP API over the Engine, on cpp-httplib:
// POST /v1/completions and /v1/chat/completions (whole, or streamed as
// server-sent events), GET /v1/models, POST /tokenize, GET /health and
// GET /metrics. A client that goes away cancels its request. With API keys
// configured, only /health and /metrics answer without one. Connections come
// through a ConnectionGate: requests are read whole before a thread serves
// them, and /health and /metrics have threads of their own.
#ifndef MLASERVE_COORDINATOR_API_HTTP_SERVER_H_
#define MLASERVE_COORDINATOR_API_HTTP_SERVER_H_

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "common/auth.h"
#include "coordinator/api/connection_gate.h"
#include "coordinator/api/openai_protocol.h"
#include "coordinator/serving/engine.h"
#include "coordinator/serving/metrics.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace mlaserve {

struct HttpOptions {
  // Limits on connections and request arrival, and the request threads: a
  // streamed response holds one for its whole length, so request_threads
  // bounds the concurrent streams. Its control paths and error bodies are
  // the server's own.
  GateOptions connections;
  // Client API keys: every route but /health and /metrics answers 401 to a
  // request without one of them ("Authorization: Bearer <key>"). Empty: open.
  KeySet api_keys;
};

class HttpServer {
 public:
  HttpServer(Engine& engine, ServingMetrics& metrics, HttpOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port (port 0: an ephemeral one) and serves on background
  // threads. Returns once connections can be made.
  // REQUIRES: not started before.
  absl::Status Start(const std::string& host, int port);
  // The bound port; -1 before Start.
  int port() const { return port_; }
  // Waits up to `timeout` until no request is being read out or answered
  // (after the engine has finished them, for a graceful stop); whether that
  // came.
  bool AwaitIdle(absl::Duration timeout) { return port_ < 0 || gate_->AwaitIdle(timeout); }
  // Stops accepting, cancels the requests in flight and waits until every
  // connection has closed. Idempotent.
  void Stop();

 private:
  class Listener;
  struct Submission;

  // A POST route whose handler gets the body (the gate bounded it).
  using BodyHandler = std::function<void(const std::string& body, httplib::Response&)>;
  void AddPost(const std::string& path, BodyHandler handler);
  void AddRoutes();
  absl::StatusOr<Submission> Submit(GenerateInput input, bool stream);
  void HandleGenerate(ApiKind kind, const std::string& body, httplib::Response& res);
  void RespondWhole(const Submission& submission, const ResponseHeader& header, bool wants_logprobs,
                    httplib::Response& res);
  void RespondStream(const Submission& submission, ResponseHeader header, bool include_usage,
                     httplib::Response& res);
  void HandleTokenize(const std::string& body, httplib::Response& res);
  void HandleModels(httplib::Response& res);
  void HandleHealth(httplib::Response& res);
  void HandleMetrics(httplib::Response& res);

  Engine& engine_;
  ServingMetrics& metrics_;
  const HttpOptions options_;
  std::unique_ptr<Listener> server_;
  std::unique_ptr<ConnectionGate> gate_;
  int port_ = -1;
  std::atomic<bool> stopping_{false};
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_API_HTTP_SERVER_H_
