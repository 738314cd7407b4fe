// Paths given on the command line of a tool started by `bazel run`, which
// changes directory: users mean them relative to where they typed.
#ifndef MLASERVE_COMMON_USER_PATH_H_
#define MLASERVE_COMMON_USER_PATH_H_

#include <string>

namespace mlaserve {

// A relative `path` joined to BUILD_WORKING_DIRECTORY when that is set;
// absolute and empty paths, and everything outside `bazel run`, unchanged.
std::string ResolveUserPath(const std::string& path);

}  // namespace mlaserve

#endif  // MLASERVE_COMMON_USER_PATH_H_
