// Vectorizable float math for the CPU kernels.
//
// glibc's expf is a call the compiler cannot vectorize without -ffast-math,
// which would also license reassociation everywhere. FastExp uses only
// arithmetic and integer bit operations, so a loop calling it under
// `#pragma omp simd` becomes straight vector code. Accuracy is about 1 ulp
// over the whole float range (Cephes expf polynomial).
#pragma once

#include <bit>
#include <cstdint>
#include <limits>

namespace tessera::cpu {

// exp(x). Inputs above 88.3 return inf (exp overflows float at 88.72; the
// last 0.4 are given up to keep the scaling exponent in range); inputs below
// -87.3 return 0 (denormal results are flushed).
inline float FastExp(float x) {
  constexpr float kMaxInput = 88.3f;
  constexpr float kMinInput = -87.3f;
  constexpr float kLog2e = 1.44269504088896341f;
  // ln2 split in a part exact in few bits and a correction (Cody-Waite).
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  // Adding 1.5 * 2^23 rounds to the nearest integer in the default mode.
  constexpr float kRoundMagic = 12582912.0f;

  const bool underflow = x < kMinInput;
  const bool overflow = x > kMaxInput;
  x = x > kMaxInput ? kMaxInput : x;
  x = x < kMinInput ? kMinInput : x;
  const float n = (x * kLog2e + kRoundMagic) - kRoundMagic;  // n in [-126, 127]
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;  // |r| <= ln2 / 2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float exp_r = p * r * r + r + 1.0f;
  const int32_t biased = (static_cast<int32_t>(n) + 127) << 23;
  const float result = exp_r * std::bit_cast<float>(biased);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  return underflow ? 0.0f : (overflow ? kInf : result);
}

// 1 / (1 + exp(-x)), in [0, 1] for every x, exactly 0 and 1 in the tails.
inline float FastSigmoid(float x) { return 1.0f / (1.0f + FastExp(-x)); }

}  // namespace tessera::cpu
