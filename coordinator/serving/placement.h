// What routing knows of an engine group: its role and where in it a prompt
// would run. Shared by the coordinator's engine groups and the cluster
// simulator's, which the same Router routes among.
#ifndef MLASERVE_COORDINATOR_SERVING_PLACEMENT_H_
#define MLASERVE_COORDINATOR_SERVING_PLACEMENT_H_

#include <cstdint>

#include "coordinator/serving/block_manager.h"

namespace mlaserve {

// With prefill/decode disaggregation, new requests start in prefill groups,
// which hand each sequence over after its first token to a decode group.
enum class GroupRole { kMixed, kPrefill, kDecode };

// Where a request would run in a group: the attention replica caching the
// longest prefix of its prompt (whole blocks, at most all but the last token),
// the least loaded among equals, and how long that prefix is.
struct Placement {
  int replica = 0;
  PrefixMatch prefix;  // the cached prefix in that replica (not held)
  int64_t cached_tokens() const { return prefix.num_tokens; }
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_PLACEMENT_H_
