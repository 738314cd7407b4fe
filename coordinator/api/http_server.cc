#include "coordinator/api/http_server.h"

#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <exception>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "coordinator/api/connection_gate.h"
#include "coordinator/api/update_queue.h"

namespace mlaserve {

// httplib parses requests, routes them and writes responses; its protected
// process_request serves one request from any Stream, so a subclass takes the
// requests the gate read whole. Chunked responses end when the listening
// socket reads as closed, so it is given the gate's.
class HttpServer::Listener : public httplib::Server {
 public:
  // Serves the request `stream` holds. Returns whether the connection can
  // carry another: the response was written and the client did not ask to
  // close.
  bool ServeOne(httplib::Stream& stream, bool close_connection) {
    bool closed = false;
    return process_request(stream, close_connection, closed, nullptr) && !closed && !close_connection;
  }
  void Open(int listening_fd) { svr_sock_ = listening_fd; }
  void Shut() { svr_sock_ = INVALID_SOCKET; }
};

namespace {

using json = nlohmann::json;

// How long waits for engine updates go before looking at the client's
// connection and at Stop() again.
constexpr absl::Duration kPollInterval = absl::Milliseconds(100);

void Reply(httplib::Response& res, int http_status, const json& body) {
  res.status = http_status;
  res.set_content(Serialize(body), "application/json");
}

// A full queue (429) tells the client when to come back, as OpenAI's does.
void ReplyError(httplib::Response& res, const ApiError& error) {
  if (error.http_status == 429) res.set_header("Retry-After", "1");
  Reply(res, error.http_status, error.body);
}

void ReplyFinal(const ResponseHeader& header, const std::string& text, json logprobs,
                const GenerateUpdate& final_update, httplib::Response& res) {
  const absl::Status status = FinalStatus(final_update);
  if (!status.ok()) return ReplyError(res, ToApiError(status));
  Reply(res, 200, BuildResponse(header, text, final_update, std::move(logprobs)));
}

struct SocketAddress {
  std::string ip;
  int port = -1;
};

// A socket's local or peer address, formatted as httplib formats Request's.
std::optional<SocketAddress> AddressOf(int fd, bool peer) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  sockaddr* raw = reinterpret_cast<sockaddr*>(&addr);
  if ((peer ? getpeername(fd, raw, &len) : getsockname(fd, raw, &len)) != 0) return std::nullopt;
  SocketAddress address;
  if (addr.ss_family == AF_INET) {
    address.port = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    address.port = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  } else {
    return std::nullopt;
  }
  char host[NI_MAXHOST];
  if (getnameinfo(raw, len, host, sizeof(host), nullptr, 0, NI_NUMERICHOST) != 0) return std::nullopt;
  address.ip = host;
  return address;
}

// The connection the current thread serves: handlers run on the thread that
// serves their request, and httplib gives them no other way to its socket.
thread_local int t_connection_fd = -1;

// Whether a request should be given up: the server is stopping, or the
// client went away (its socket, peeked at, reads end of stream or an error).
// Requests shorter than a poll interval never look.
class ConnectionWatch {
 public:
  explicit ConnectionWatch(const std::atomic<bool>& stopping)
      : fd_(t_connection_fd), stopping_(stopping), next_look_(absl::Now() + kPollInterval) {}

  // Looks at the socket at most once per poll interval.
  bool Lost() {
    if (stopping_) return true;
    const absl::Time now = absl::Now();
    if (now < next_look_) return false;
    next_look_ = now + kPollInterval;
    return ClientGone();
  }

 private:
  bool ClientGone() const {
    if (fd_ < 0) return false;
    char byte;
    const ssize_t n = recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n >= 0) return n == 0;  // bytes waiting are a pipelined request
    return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
  }

  const int fd_;
  const std::atomic<bool>& stopping_;
  absl::Time next_look_;
};

// httplib's view of a gate connection: the request bytes the gate read, and
// the socket for the response.
class GateStream final : public httplib::Stream {
 public:
  GateStream(GateConnection& connection, absl::Duration write_timeout)
      : connection_(connection), write_timeout_(write_timeout) {}

  bool is_readable() const override { return connection_.HasRequestBytes(); }
  bool is_writable() const override { return connection_.WaitWritable(write_timeout_); }
  ssize_t read(char* out, size_t size) override { return static_cast<ssize_t>(connection_.Read(out, size)); }
  ssize_t write(const char* data, size_t size) override {
    return connection_.Write(data, size, write_timeout_) ? static_cast<ssize_t>(size) : -1;
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override { Address(/*peer=*/true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { Address(/*peer=*/false, ip, port); }
  socket_t socket() const override { return connection_.fd(); }

 private:
  void Address(bool peer, std::string& ip, int& port) const {
    const std::optional<SocketAddress> address = AddressOf(connection_.fd(), peer);
    if (!address.has_value()) return;
    ip = address->ip;
    port = address->port;
  }

  GateConnection& connection_;
  const absl::Duration write_timeout_;
};

void Abandon(Engine& engine, int64_t request_id, UpdateQueue& queue) {
  engine.Cancel(request_id);  // its final kAbort update is dropped by the closed queue
  queue.Close();
}

// One streamed response: engine updates out as server-sent events, pumped by
// httplib's chunked content provider on the connection's thread.
class EventStream {
 public:
  EventStream(Engine& engine, int64_t request_id, std::shared_ptr<UpdateQueue> queue, ResponseHeader header,
              bool include_usage, ConnectionWatch watch)
      : engine_(engine),
        request_id_(request_id),
        queue_(std::move(queue)),
        header_(std::move(header)),
        include_usage_(include_usage),
        watch_(std::move(watch)) {}

  // Sends what is ready, in one write however many tokens came. False ends
  // the response early: the client is gone, or the server is stopping.
  bool Pump(httplib::DataSink& sink) {
    if (!opened_) {
      opened_ = true;
      if (header_.kind == ApiKind::kChat) return Send(sink, Event(BuildRoleChunk(header_, include_usage_)));
    }
    std::string events;
    for (const GenerateUpdate& update : queue_->Take(kPollInterval)) {
      if (update.finished()) {
        finished_ = true;
        AppendLast(update, &events);
        break;
      }
      // Every token gets its chunk, even one whose text is still empty (held
      // back by a stop string, an unfinished UTF-8 character, or no text at
      // all), as vLLM does: a client times each token.
      events += Event(Chunk(update));
    }
    if (events.empty()) return !watch_.Lost();
    if (!Send(sink, events)) return false;
    if (finished_) sink.done();
    return true;
  }

  // httplib releases the provider when the response ends, however it ends.
  void Release() {
    if (!finished_) Abandon(engine_, request_id_, *queue_);
  }

 private:
  void AppendLast(const GenerateUpdate& update, std::string* events) {
    const absl::Status status = FinalStatus(update);
    if (!status.ok()) {
      *events += Event(ToApiError(status).body);
    } else {
      *events += Event(Chunk(update));
      if (include_usage_) *events += Event(BuildUsageChunk(header_, update));
    }
    *events += RawEvent("[DONE]");
  }

  // An update's chunk, with its tokens' logprobs when it has any.
  json Chunk(const GenerateUpdate& update) {
    json logprobs;
    if (!update.logprobs.empty()) {
      logprobs = BuildLogprobs(header_.kind, engine_.tokenizer(), update.logprobs, &text_offset_);
    }
    return BuildChunk(header_, update, include_usage_, std::move(logprobs));
  }

  static std::string Event(const json& data) { return RawEvent(Serialize(data)); }
  static std::string RawEvent(absl::string_view data) { return absl::StrCat("data: ", data, "\n\n"); }
  static bool Send(httplib::DataSink& sink, const std::string& events) {
    return sink.write(events.data(), events.size());
  }

  Engine& engine_;
  const int64_t request_id_;
  const std::shared_ptr<UpdateQueue> queue_;
  const ResponseHeader header_;
  const bool include_usage_;
  ConnectionWatch watch_;
  bool opened_ = false;
  bool finished_ = false;
  int64_t text_offset_ = 0;  // characters of the tokens sent so far, for completions' logprobs
};

std::string DefaultErrorMessage(const httplib::Request& req, int http_status, size_t max_body_bytes) {
  switch (http_status) {
    case 404:
      return absl::StrCat("no route for ", req.method, " ", req.path);
    case 413:
      return absl::StrCat("the request body exceeds ", max_body_bytes, " bytes");
    case 400:
      return "the request could not be read";
    default:
      return absl::StrCat("HTTP error ", http_status);
  }
}

}  // namespace

struct HttpServer::Submission {
  int64_t id = 0;
  std::shared_ptr<UpdateQueue> queue;
};

HttpServer::HttpServer(Engine& engine, ServingMetrics& metrics, HttpOptions options)
    : engine_(engine), metrics_(metrics), options_(std::move(options)), server_(std::make_unique<Listener>()) {
  server_->set_payload_max_length(options_.connections.max_body_bytes);
  server_->set_keep_alive_timeout(absl::ToInt64Seconds(options_.connections.idle_timeout));
  GateOptions gate = options_.connections;
  gate.control_paths = {"/health", "/metrics"};
  gate.error_body = [](int http_status, const std::string& message) {
    return Serialize(HttpError(http_status, message).body);
  };
  gate_ = std::make_unique<ConnectionGate>(std::move(gate), [this](GateConnection& connection) {
    GateStream stream(connection, options_.connections.write_timeout);
    t_connection_fd = connection.fd();
    const bool keep = server_->ServeOne(stream, /*close_connection=*/stopping_);
    t_connection_fd = -1;
    return keep;
  });
  AddRoutes();
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::AddPost(const std::string& path, BodyHandler handler) {
  // The gate read the body whole, within its limit, before this thread had it.
  server_->Post(path, [handler = std::move(handler)](const httplib::Request& req, httplib::Response& res) {
    handler(req.body, res);
  });
}

void HttpServer::AddRoutes() {
  AddPost("/v1/completions", [this](const std::string& body, httplib::Response& res) {
    HandleGenerate(ApiKind::kCompletion, body, res);
  });
  AddPost("/v1/chat/completions", [this](const std::string& body, httplib::Response& res) {
    HandleGenerate(ApiKind::kChat, body, res);
  });
  AddPost("/tokenize", [this](const std::string& body, httplib::Response& res) {
    HandleTokenize(body, res);
  });
  server_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) { HandleModels(res); });
  server_->Get("/health", [this](const httplib::Request&, httplib::Response& res) { HandleHealth(res); });
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) { HandleMetrics(res); });
  // Before any route reads a body: the caller's key.
  server_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.path == "/health" || req.path == "/metrics" || options_.api_keys.Admits(req.get_header_value("Authorization"))) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    res.set_header("WWW-Authenticate", "Bearer");
    ReplyError(res, HttpError(401, "missing or wrong API key: send \"Authorization: Bearer <key>\""));
    return httplib::Server::HandlerResponse::Handled;
  });
  // Errors httplib answers itself (no route, body too large, bad HTTP) get
  // OpenAI's body too; responses that already have one keep it.
  server_->set_error_handler(
      httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        ReplyError(res,
                   HttpError(res.status, DefaultErrorMessage(req, res.status, options_.connections.max_body_bytes)));
        return httplib::Server::HandlerResponse::Handled;
      }));
  server_->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    ReplyError(res, HttpError(500, "internal error while handling the request"));
  });
}

absl::Status HttpServer::Start(const std::string& host, int port) {
  if (port_ >= 0 || stopping_) return absl::FailedPreconditionError("the HTTP server was already started");
  absl::StatusOr<int> bound = gate_->Start(host, port);
  if (!bound.ok()) return bound.status();
  port_ = *bound;
  server_->Open(gate_->listening_fd());
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (port_ < 0 || stopping_.exchange(true)) return;
  server_->Shut();
  gate_->Stop();
}

absl::StatusOr<HttpServer::Submission> HttpServer::Submit(GenerateInput input, bool stream) {
  auto queue = std::make_shared<UpdateQueue>(/*wake_on_each=*/stream);
  absl::StatusOr<int64_t> id =
      engine_.Submit(std::move(input), [queue](const GenerateUpdate& update) { queue->Push(update); });
  if (!id.ok()) {
    metrics_.CountRejected();
    return id.status();
  }
  return Submission{*id, std::move(queue)};
}

void HttpServer::HandleGenerate(ApiKind kind, const std::string& body_text, httplib::Response& res) {
  absl::StatusOr<json> body = ParseBody(body_text);
  if (!body.ok()) return ReplyError(res, ToApiError(body.status()));
  absl::StatusOr<ApiRequest> request = ParseGenerateRequest(kind, *body, engine_);
  if (!request.ok()) return ReplyError(res, ToApiError(request.status()));
  const bool wants_logprobs = request->input.sampling.logprobs >= 0;
  absl::StatusOr<Submission> submission = Submit(std::move(request->input), request->stream);
  if (!submission.ok()) return ReplyError(res, ToApiError(submission.status()));
  ResponseHeader header = NewResponseHeader(kind, engine_.model_name());
  if (request->stream) {
    RespondStream(*submission, std::move(header), request->include_usage, res);
  } else {
    RespondWhole(*submission, header, wants_logprobs, res);
  }
}

void HttpServer::RespondWhole(const Submission& submission, const ResponseHeader& header, bool wants_logprobs,
                              httplib::Response& res) {
  ConnectionWatch watch(stopping_);
  std::string text;
  std::vector<TokenLogprobs> logprobs;
  while (true) {
    for (const GenerateUpdate& update : submission.queue->Take(kPollInterval)) {
      text += update.text;
      logprobs.insert(logprobs.end(), update.logprobs.begin(), update.logprobs.end());
      if (update.finished()) {
        int64_t text_offset = 0;
        json choice_logprobs =
            wants_logprobs ? BuildLogprobs(header.kind, engine_.tokenizer(), logprobs, &text_offset) : json(nullptr);
        return ReplyFinal(header, text, std::move(choice_logprobs), update, res);
      }
    }
    if (watch.Lost()) {
      Abandon(engine_, submission.id, *submission.queue);
      return ReplyError(res, ToApiError(absl::UnavailableError("the server is stopping or the client went away")));
    }
  }
}

void HttpServer::RespondStream(const Submission& submission, ResponseHeader header, bool include_usage,
                               httplib::Response& res) {
  auto stream = std::make_shared<EventStream>(engine_, submission.id, submission.queue, std::move(header),
                                              include_usage, ConnectionWatch(stopping_));
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream", [stream](size_t, httplib::DataSink& sink) { return stream->Pump(sink); },
      [stream](bool) { stream->Release(); });
}

void HttpServer::HandleTokenize(const std::string& body_text, httplib::Response& res) {
  absl::StatusOr<json> body = ParseBody(body_text);
  if (!body.ok()) return ReplyError(res, ToApiError(body.status()));
  absl::StatusOr<std::vector<int32_t>> ids = ParseTokenizeRequest(*body, engine_);
  if (!ids.ok()) return ReplyError(res, ToApiError(ids.status()));
  Reply(res, 200, BuildTokenizeResponse(*ids, engine_.max_context()));
}

void HttpServer::HandleModels(httplib::Response& res) {
  Reply(res, 200, BuildModelsResponse(engine_.model_name(), engine_.max_context(), engine_.KvCapacity()));
}

void HttpServer::HandleHealth(httplib::Response& res) {
  const EngineHealth health = engine_.Health();
  // Readiness probes take a shutting-down server out of rotation.
  if (health.shutting_down) return ReplyError(res, ToApiError(absl::UnavailableError("the server is shutting down")));
  if (!health.serving) {
    return ReplyError(
        res, ToApiError(absl::UnavailableError(absl::StrCat("no engine group can serve: ", health.live_workers, " of ",
                                                            health.total_workers, " workers live"))));
  }
  // Below its planned groups the cluster serves, with less capacity: say so.
  const bool full = health.planned_groups == 0 || health.serving_groups >= health.planned_groups;
  Reply(res, 200,
        {{"status", full ? "ok" : "degraded"},
         {"live_workers", health.live_workers},
         {"total_workers", health.total_workers},
         {"serving_groups", health.serving_groups},
         {"planned_groups", health.planned_groups}});
}

void HttpServer::HandleMetrics(httplib::Response& res) {
  res.set_content(metrics_.Serialize(), "text/plain; version=0.0.4");
}

}  // namespace mlaserve
