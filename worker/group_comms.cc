#include "worker/group_comms.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mlaserve {

absl::StatusOr<GroupComms> ConnectGroup(RendezvousStore& store, const std::string& prefix, const ParallelPlan& plan,
                                        int group_rank, absl::Duration timeout, const CommunicatorFactory& factory) {
  GroupComms comms;
  comms.plan = plan;
  comms.group_rank = group_rank;
  if (plan.group_size() > 1) {
    ASSIGN_OR_RETURN(comms.group, factory(store, prefix + "/group", group_rank, plan.group_size(), timeout));
  }
  if (plan.tp > 1) {
    const int replica = group_rank / plan.tp;
    ASSIGN_OR_RETURN(comms.attention,
                     factory(store, absl::StrCat(prefix, "/replica", replica), group_rank % plan.tp, plan.tp, timeout));
  }
  if (plan.dp_attention > 1) {
    const int tp_rank = group_rank % plan.tp;
    ASSIGN_OR_RETURN(comms.context, factory(store, absl::StrCat(prefix, "/context", tp_rank), group_rank / plan.tp,
                                            plan.dp_attention, timeout));
  }
  return comms;
}

}  // namespace mlaserve
