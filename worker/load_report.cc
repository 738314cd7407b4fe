#include "worker/load_report.h"

#include <chrono>
#include <cstdio>
#include <utility>

namespace mlaserve {

LoadProgress LoadReporter(std::string who) {
  const auto start = std::chrono::steady_clock::now();
  return [who = std::move(who), start](int64_t done, int64_t total, int64_t bytes) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "%s: loading weights, layer %lld/%lld, %.2f GB in %.1f s (%.2f GB/s)\n", who.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total), bytes / 1e9, seconds,
                 seconds > 0 ? bytes / 1e9 / seconds : 0.0);
  };
}

}  // namespace mlaserve
