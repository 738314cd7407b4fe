// Fuzz target: a safetensors file (header length, JSON header, data) opened
// as a checkpoint shard; every byte of every tensor it lists is read, so a
// view reaching past the file faults here rather than in a loader.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "common/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd_create("safetensors_fuzz", 0);
  if (fd < 0) return 0;
  if (size > 0 && write(fd, data, size) != static_cast<ssize_t>(size)) {
    close(fd);
    return 0;
  }
  auto file = mlaserve::SafetensorsFile::Open("/proc/self/fd/" + std::to_string(fd));
  if (file.ok()) {
    volatile uint8_t sum = 0;
    for (const std::string& name : (*file)->TensorNames()) {
      const mlaserve::TensorView* view = (*file)->Find(name);
      if (view == nullptr) __builtin_trap();  // listed but not found
      for (size_t i = 0; i < view->num_bytes; ++i) sum = sum + view->data[i];
    }
  }
  close(fd);
  return 0;
}
