#include "common/auth.h"

#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/client_interceptor.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace mlaserve {
namespace {

constexpr absl::string_view kBearer = "bearer ";

// Equality of two strings in time that depends only on their lengths.
bool SameKey(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// Adds the authorization metadata to every call of the channel it serves.
class BearerInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerInterceptor(const std::string* value) : value_(value) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", *value_});
    }
    methods->Proceed();
  }

 private:
  const std::string* value_;
};

class BearerInterceptorFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerInterceptorFactory(const std::string& secret) : value_(absl::StrCat("Bearer ", secret)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new BearerInterceptor(&value_);
  }

 private:
  const std::string value_;
};

}  // namespace

KeySet::KeySet(std::vector<std::string> keys) : keys_(std::move(keys)) {}

absl::StatusOr<KeySet> KeySet::FromFile(const std::string& path) {
  if (path.empty()) return KeySet();
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read key file ", path));
  std::stringstream text;
  text << in.rdbuf();
  std::vector<std::string> keys;
  for (absl::string_view line : absl::StrSplit(text.str(), '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!line.empty()) keys.emplace_back(line);
  }
  if (keys.empty()) return absl::InvalidArgumentError(absl::StrCat("key file ", path, " holds no key"));
  return KeySet(std::move(keys));
}

bool KeySet::Admits(absl::string_view authorization) const {
  if (open()) return true;
  if (authorization.size() <= kBearer.size() ||
      !absl::EqualsIgnoreCase(authorization.substr(0, kBearer.size()), kBearer)) {
    return false;
  }
  const absl::string_view presented = absl::StripAsciiWhitespace(authorization.substr(kBearer.size()));
  bool admitted = false;
  for (const std::string& key : keys_) admitted |= SameKey(presented, key);
  return admitted;
}

grpc::Status CheckCaller(const KeySet& keys, const grpc::ServerContext& context) {
  if (keys.open()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  if (it != metadata.end() && keys.Admits(absl::string_view(it->second.data(), it->second.size()))) {
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing or wrong credential");
}

std::shared_ptr<grpc::Channel> AuthorizedChannel(const std::string& address, const std::string& secret,
                                                 const grpc::ChannelArguments& args) {
  if (secret.empty()) return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<BearerInterceptorFactory>(secret));
  return grpc::experimental::CreateCustomChannelWithInterceptors(address, grpc::InsecureChannelCredentials(), args,
                                                                 std::move(interceptors));
}

bool IsLoopback(absl::string_view host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

absl::Status CheckExposure(absl::string_view what, absl::string_view host, bool has_credential, bool insecure,
                           absl::string_view credential_flag) {
  if (has_credential || insecure || IsLoopback(host)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("refusing to serve ", what, " on ", host,
                                                    ", which other hosts can reach, without a credential: give ",
                                                    credential_flag, ", or --insecure to serve it open"));
}

}  // namespace mlaserve
