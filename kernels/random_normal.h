// Counter-based random numbers: value i of a stream is a pure function of
// (seed, i), so every backend fills a tensor with the same values in any
// order or parallel split (random-weights models agree across CPU and GPU)
// and a sampler draws the same number on the host and in a kernel.
// SplitMix64 (Steele, Lea and Flood) feeding Box-Muller; written here because
// it must run inside CUDA kernels as well as on the host.
#ifndef MLASERVE_KERNELS_RANDOM_NORMAL_H_
#define MLASERVE_KERNELS_RANDOM_NORMAL_H_

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MLASERVE_HOST_DEVICE __host__ __device__
#else
#define MLASERVE_HOST_DEVICE
#endif

namespace mlaserve {

MLASERVE_HOST_DEVICE inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A standard normal draw, element `index` of stream `seed`.
MLASERVE_HOST_DEVICE inline float RandomNormal(uint64_t seed, uint64_t index) {
  const uint64_t a = SplitMix64(seed ^ SplitMix64(index));
  const uint64_t b = SplitMix64(a);
  const float u1 = (static_cast<float>(a >> 40) + 1.0f) * (1.0f / 16777216.0f);  // (0, 1]
  const float u2 = static_cast<float>(b >> 40) * (1.0f / 16777216.0f);            // [0, 1)
  return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795865f * u2);
}

// A uniform draw in [0, 1) with 53 random bits, element `index` of stream
// `seed` (its own mix, so it is not a function of RandomNormal's draws).
MLASERVE_HOST_DEVICE inline double RandomUniform(uint64_t seed, uint64_t index) {
  const uint64_t bits = SplitMix64(SplitMix64(seed) ^ SplitMix64(index ^ 0x5851f42d4c957f2dull));
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace mlaserve

#endif  // MLASERVE_KERNELS_RANDOM_NORMAL_H_
