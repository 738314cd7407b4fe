#include "common/user_path.h"

#include <cstdlib>
#include <filesystem>

namespace mlaserve {

std::string ResolveUserPath(const std::string& path) {
  const char* cwd = std::getenv("BUILD_WORKING_DIRECTORY");
  if (path.empty() || path[0] == '/' || cwd == nullptr) return path;
  return (std::filesystem::path(cwd) / path).string();
}

}  // namespace mlaserve
