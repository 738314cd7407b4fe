// The keepalive of the connections between a coordinator and its workers: a
// connection whose packets vanish (a partition) is found dead within seconds
// by pings every 2 s, rather than after TCP's retransmissions, which last tens
// of seconds and would keep a worker away long after the partition heals.
#ifndef MLASERVE_COMMON_GRPC_KEEPALIVE_H_
#define MLASERVE_COMMON_GRPC_KEEPALIVE_H_

#include <grpcpp/server_builder.h>
#include <grpcpp/support/channel_arguments.h>

namespace mlaserve {

// A channel's side: ping every 2 s, calls in flight or not, and give up on a
// connection after 2 s without an answer.
void PingAcrossPartitions(grpc::ChannelArguments* args);

// A server's side: accept those pings (gRPC's default answers pings more
// often than every 5 minutes by closing the connection).
void AcceptPartitionPings(grpc::ServerBuilder* builder);

}  // namespace mlaserve

#endif  // MLASERVE_COMMON_GRPC_KEEPALIVE_H_
