// Who may call: client API keys and the cluster secret, each a bearer token
// ("authorization: Bearer <key>", the OpenAI and vLLM convention) on HTTP
// requests and gRPC metadata; the rule that a port reachable from other
// hosts needs a credential.
//
// Keys live in files, one per line (blank lines and surrounding whitespace
// ignored), so that they never appear on a command line or in `ps`.
#ifndef MLASERVE_COMMON_AUTH_H_
#define MLASERVE_COMMON_AUTH_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mlaserve {

// A set of accepted bearer tokens. An empty set admits everyone (no
// credential configured).
class KeySet {
 public:
  KeySet() = default;
  explicit KeySet(std::vector<std::string> keys);

  // The keys of `path`, one per line. An empty `path` gives the empty
  // (open) set.
  // REQUIRES: a named file exists, is readable and holds at least one key;
  // otherwise an error naming the file.
  static absl::StatusOr<KeySet> FromFile(const std::string& path);

  bool open() const { return keys_.empty(); }

  // Whether an `authorization` header or metadata value ("Bearer <key>",
  // scheme case-insensitive) carries one of the keys; true when open. The
  // comparison takes the same time wherever a wrong key first differs.
  bool Admits(absl::string_view authorization) const;

  // What this process presents when it calls a peer that checks the same set
  // (the cluster secret): the first key, or nothing when open.
  std::string presented() const { return open() ? std::string() : keys_.front(); }

 private:
  std::vector<std::string> keys_;
};

// OK when the call's "authorization" metadata is admitted by `keys`, else
// UNAUTHENTICATED (nothing about the keys in the message).
grpc::Status CheckCaller(const KeySet& keys, const grpc::ServerContext& context);

// An insecure channel to `address` whose every call carries
// "authorization: Bearer <secret>"; a plain channel when `secret` is empty.
std::shared_ptr<grpc::Channel> AuthorizedChannel(const std::string& address, const std::string& secret,
                                                 const grpc::ChannelArguments& args = {});

// Whether `host` (a bind address or name) is reachable only from this
// machine: localhost, 127.0.0.0/8 or ::1.
bool IsLoopback(absl::string_view host);

// The rule for binding `host` for `what` (e.g. "the HTTP API"): a loopback
// address needs nothing; any other needs a credential unless `insecure` says
// the operator accepts an open port.
// REQUIRES: nothing. Returns FailedPrecondition naming the flags otherwise.
absl::Status CheckExposure(absl::string_view what, absl::string_view host, bool has_credential, bool insecure,
                           absl::string_view credential_flag);

}  // namespace mlaserve

#endif  // MLASERVE_COMMON_AUTH_H_
