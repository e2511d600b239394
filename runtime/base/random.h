// Deterministic random numbers.
//
// Everything random in tessera derives from train.seed through these
// functions, so a run is reproducible bit for bit and its state is a few
// integers that a checkpoint can hold.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

// The draws below are also compiled into CUDA kernels (the device's dropout
// masks equal the host's bit for bit).
#if defined(__CUDACC__)
#define TESSERA_HOST_DEVICE __host__ __device__
#else
#define TESSERA_HOST_DEVICE
#endif

namespace tessera {

// SplitMix64 finalizer: a bijective 64-bit mix.
TESSERA_HOST_DEVICE constexpr uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// FNV-1a, for keying random streams by a name (e.g. a parameter's).
constexpr uint64_t HashName(std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

// Uniform in [0, 1) from 64 random bits (24 bits of mantissa).
TESSERA_HOST_DEVICE inline float BitsToUniform(uint64_t bits) {
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}

// Counter-based draws: the value at `counter` of stream `key`, independent of
// any other draw, so a shard of a tensor can be generated without the rest.
TESSERA_HOST_DEVICE inline float CounterUniform(uint64_t key, uint64_t counter) {
  return BitsToUniform(Mix64(key ^ Mix64(counter)));
}
inline float CounterNormal(uint64_t key, uint64_t counter) {
  const float u1 = CounterUniform(key, 2 * counter);
  const float u2 = CounterUniform(key, 2 * counter + 1);
  const double r = std::sqrt(-2.0 * std::log(1.0 - static_cast<double>(u1)));
  return static_cast<float>(r * std::cos(6.283185307179586 * static_cast<double>(u2)));
}

// A sequential generator whose whole state is one integer.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0, uint64_t stream = 0) : state_(Mix64(seed) ^ Mix64(~stream)) {}

  uint64_t NextU64() { return Mix64(state_++); }
  float Uniform() { return BitsToUniform(NextU64()); }
  // Standard normal (Box-Muller; consumes two draws).
  float Normal() {
    const float u1 = Uniform();
    const float u2 = Uniform();
    const double r = std::sqrt(-2.0 * std::log(1.0 - static_cast<double>(u1)));
    return static_cast<float>(r * std::cos(6.283185307179586 * static_cast<double>(u2)));
  }
  // Uniform integer in [0, n).
  uint64_t Below(uint64_t n) { return static_cast<uint64_t>((static_cast<__uint128_t>(NextU64()) * n) >> 64); }

  uint64_t state() const { return state_; }
  void set_state(uint64_t state) { state_ = state; }

 private:
  uint64_t state_;
};

}  // namespace tessera
