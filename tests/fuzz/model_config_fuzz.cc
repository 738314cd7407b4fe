// Fuzz target: a model's config.json, as the coordinator and workers parse it.
#include <cstdint>
#include <string>

#include "common/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mlaserve::ParseModelConfig(std::string(reinterpret_cast<const char*>(data), size)).IgnoreError();
  return 0;
}
