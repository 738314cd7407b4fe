// Status plumbing shared by every layer: early-return on error and unwrap a
// StatusOr, in the style of LevelDB/Abseil code bases.
#ifndef MLASERVE_COMMON_STATUS_MACROS_H_
#define MLASERVE_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MLA_CONCAT_INNER_(a, b) a##b
#define MLA_CONCAT_(a, b) MLA_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (a Status) is not OK.
#define RETURN_IF_ERROR(expr)                     \
  do {                                            \
    absl::Status mla_status_ = (expr);            \
    if (!mla_status_.ok()) return mla_status_;    \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, FunctionReturningStatusOr())`.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(MLA_CONCAT_(mla_statusor_, __LINE__), lhs, expr)

#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()

#endif  // MLASERVE_COMMON_STATUS_MACROS_H_
