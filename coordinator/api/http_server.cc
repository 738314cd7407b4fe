#include "coordinator/api/http_server.h"

#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <exception>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "coordinator/api/update_queue.h"

namespace mlaserve {

// httplib listens with a backlog of 5, too short for a burst of clients; its
// listening socket is protected, so a subclass reaches it to widen the backlog.
class HttpServer::Listener : public httplib::Server {
 public:
  void WidenBacklog() { ::listen(svr_sock_, SOMAXCONN); }
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
  bool operator==(const SocketAddress& other) const { return port == other.port && ip == other.ip; }
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

// Whether a request should be given up: the server is stopping, or the
// client went away. httplib 0.11 gives handlers neither the connection's
// socket nor a disconnect signal, so the socket is found among the process's
// descriptors by its two addresses (it stays open, and keeps its number,
// while its handler and content provider run) and peeked at: end of stream or
// an error means the client is gone. Requests shorter than a poll interval
// never look.
class ConnectionWatch {
 public:
  ConnectionWatch(const httplib::Request& req, const std::atomic<bool>& stopping)
      : local_{req.local_addr, req.local_port},
        remote_{req.remote_addr, req.remote_port},
        stopping_(stopping),
        next_look_(absl::Now() + kPollInterval) {}

  // Looks at the socket at most once per poll interval.
  bool Lost() {
    if (stopping_) return true;
    const absl::Time now = absl::Now();
    if (now < next_look_) return false;
    next_look_ = now + kPollInterval;
    return ClientGone();
  }

 private:
  bool ClientGone() {
    if (!fd_.has_value()) fd_ = FindSocket();
    if (*fd_ < 0) return false;
    char byte;
    const ssize_t n = recv(*fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n >= 0) return n == 0;  // bytes waiting are a pipelined request
    return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
  }

  // -1 when not found; the client then never looks gone.
  int FindSocket() const {
    DIR* dir = opendir("/proc/self/fd");
    if (dir == nullptr) return -1;
    int found = -1;
    while (const dirent* entry = readdir(dir)) {
      int fd;
      if (!absl::SimpleAtoi(entry->d_name, &fd) || fd == dirfd(dir)) continue;
      if (AddressOf(fd, /*peer=*/true) == remote_ && AddressOf(fd, /*peer=*/false) == local_) {
        found = fd;
        break;
      }
    }
    closedir(dir);
    return found;
  }

  const SocketAddress local_;
  const SocketAddress remote_;
  const std::atomic<bool>& stopping_;
  absl::Time next_look_;
  std::optional<int> fd_;
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

// Reads a body of at most `max_bytes`, or replies with an error. httplib
// bounds bodies that declare a Content-Length, but not chunked ones. The rest
// of an oversized body is read and dropped, as httplib skips an oversized
// Content-Length body, so that the client gets the 413 rather than a reset.
bool ReadBody(const httplib::Request& req, const httplib::ContentReader& reader, size_t max_bytes, std::string* body,
              httplib::Response& res) {
  bool too_large = false;
  const bool read = reader([&](const char* data, size_t length) {
    too_large = too_large || length > max_bytes - body->size();
    if (!too_large) body->append(data, length);
    return true;
  });
  if (read && !too_large) return true;
  const int http_status = too_large || res.status == 413 ? 413 : 400;
  ReplyError(res, HttpError(http_status, DefaultErrorMessage(req, http_status, max_bytes)));
  return false;
}

}  // namespace

struct HttpServer::Submission {
  int64_t id = 0;
  std::shared_ptr<UpdateQueue> queue;
};

HttpServer::HttpServer(Engine& engine, ServingMetrics& metrics, HttpOptions options)
    : engine_(engine), metrics_(metrics), options_(options), server_(std::make_unique<Listener>()) {
  server_->new_task_queue = [threads = options_.worker_threads] { return new httplib::ThreadPool(threads); };
  server_->set_payload_max_length(options_.max_body_bytes);
  AddRoutes();
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::AddPost(const std::string& path, BodyHandler handler) {
  server_->Post(path, [this, handler = std::move(handler)](const httplib::Request& req, httplib::Response& res,
                                                           const httplib::ContentReader& reader) {
    std::string body;
    if (ReadBody(req, reader, options_.max_body_bytes, &body, res)) handler(body, req, res);
  });
}

void HttpServer::AddRoutes() {
  AddPost("/v1/completions", [this](const std::string& body, const httplib::Request& req, httplib::Response& res) {
    HandleGenerate(ApiKind::kCompletion, body, req, res);
  });
  AddPost("/v1/chat/completions", [this](const std::string& body, const httplib::Request& req, httplib::Response& res) {
    HandleGenerate(ApiKind::kChat, body, req, res);
  });
  AddPost("/tokenize", [this](const std::string& body, const httplib::Request&, httplib::Response& res) {
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
        ReplyError(res, HttpError(res.status, DefaultErrorMessage(req, res.status, options_.max_body_bytes)));
        return httplib::Server::HandlerResponse::Handled;
      }));
  server_->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    ReplyError(res, HttpError(500, "internal error while handling the request"));
  });
}

absl::Status HttpServer::Start(const std::string& host, int port) {
  if (thread_.joinable() || stopping_) return absl::FailedPreconditionError("the HTTP server was already started");
  if (port == 0) {
    port_ = server_->bind_to_any_port(host);
  } else {
    port_ = server_->bind_to_port(host, port) ? port : -1;
  }
  if (port_ < 0) return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ":", port));
  server_->WidenBacklog();
  auto exited = std::make_shared<std::atomic<bool>>(false);
  thread_ = std::thread([this, exited] {
    server_->listen_after_bind();
    *exited = true;
  });
  // Stop() can only stop a running accept loop, so wait until it runs.
  while (!server_->is_running() && !*exited) absl::SleepFor(absl::Milliseconds(1));
  if (*exited) {
    thread_.join();
    return absl::InternalError("the HTTP accept loop ended at once");
  }
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (!thread_.joinable()) return;
  stopping_ = true;
  server_->stop();
  thread_.join();
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

void HttpServer::HandleGenerate(ApiKind kind, const std::string& body_text, const httplib::Request& req,
                                httplib::Response& res) {
  absl::StatusOr<json> body = ParseBody(body_text);
  if (!body.ok()) return ReplyError(res, ToApiError(body.status()));
  absl::StatusOr<ApiRequest> request = ParseGenerateRequest(kind, *body, engine_);
  if (!request.ok()) return ReplyError(res, ToApiError(request.status()));
  const bool wants_logprobs = request->input.sampling.logprobs >= 0;
  absl::StatusOr<Submission> submission = Submit(std::move(request->input), request->stream);
  if (!submission.ok()) return ReplyError(res, ToApiError(submission.status()));
  ResponseHeader header = NewResponseHeader(kind, engine_.model_name());
  if (request->stream) {
    RespondStream(*submission, std::move(header), request->include_usage, req, res);
  } else {
    RespondWhole(*submission, header, wants_logprobs, req, res);
  }
}

void HttpServer::RespondWhole(const Submission& submission, const ResponseHeader& header, bool wants_logprobs,
                              const httplib::Request& req, httplib::Response& res) {
  ConnectionWatch watch(req, stopping_);
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
                               const httplib::Request& req, httplib::Response& res) {
  auto stream = std::make_shared<EventStream>(engine_, submission.id, submission.queue, std::move(header),
                                              include_usage, ConnectionWatch(req, stopping_));
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
