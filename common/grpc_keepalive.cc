#include "common/grpc_keepalive.h"

#include <grpc/grpc.h>

namespace mlaserve {
namespace {

constexpr int kPingEveryMs = 2000;

}  // namespace

void PingAcrossPartitions(grpc::ChannelArguments* args) {
  args->SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kPingEveryMs);
  args->SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kPingEveryMs);
  args->SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args->SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
}

void AcceptPartitionPings(grpc::ServerBuilder* builder) {
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, kPingEveryMs / 2);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
}

}  // namespace mlaserve
