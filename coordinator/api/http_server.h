// The OpenAI-compatible HTTP API over the Engine, on cpp-httplib:
// POST /v1/completions and /v1/chat/completions (whole, or streamed as
// server-sent events), GET /v1/models, POST /tokenize, GET /health and
// GET /metrics. A client that goes away cancels its request. With API keys
// configured, only /health and /metrics answer without one.
#ifndef MLASERVE_COORDINATOR_API_HTTP_SERVER_H_
#define MLASERVE_COORDINATOR_API_HTTP_SERVER_H_

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "common/auth.h"
#include "coordinator/api/openai_protocol.h"
#include "coordinator/serving/engine.h"
#include "coordinator/serving/metrics.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace mlaserve {

struct HttpOptions {
  size_t max_body_bytes = 8 << 20;  // larger bodies get 413
  // Connection threads. A streamed response holds one for its whole length,
  // so this bounds the concurrent streams.
  int worker_threads = 128;
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

  // Binds host:port (port 0: an ephemeral one) and serves on a background
  // thread. Returns once connections can be made.
  absl::Status Start(const std::string& host, int port);
  int port() const { return port_; }
  // Stops accepting, cancels the requests in flight and waits until every
  // connection has closed. Idempotent.
  void Stop();

 private:
  class Listener;
  struct Submission;

  // A POST route whose handler gets the body, read within max_body_bytes.
  using BodyHandler = std::function<void(const std::string& body, const httplib::Request&, httplib::Response&)>;
  void AddPost(const std::string& path, BodyHandler handler);
  void AddRoutes();
  absl::StatusOr<Submission> Submit(GenerateInput input, bool stream);
  void HandleGenerate(ApiKind kind, const std::string& body, const httplib::Request& req, httplib::Response& res);
  void RespondWhole(const Submission& submission, const ResponseHeader& header, bool wants_logprobs,
                    const httplib::Request& req, httplib::Response& res);
  void RespondStream(const Submission& submission, ResponseHeader header, bool include_usage,
                     const httplib::Request& req, httplib::Response& res);
  void HandleTokenize(const std::string& body, httplib::Response& res);
  void HandleModels(httplib::Response& res);
  void HandleHealth(httplib::Response& res);
  void HandleMetrics(httplib::Response& res);

  Engine& engine_;
  ServingMetrics& metrics_;
  const HttpOptions options_;
  std::unique_ptr<Listener> server_;
  std::thread thread_;
  int port_ = -1;
  std::atomic<bool> stopping_{false};
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_API_HTTP_SERVER_H_
