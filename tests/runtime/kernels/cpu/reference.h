// Shared helpers for the CPU kernel tests: random inputs, a normalized error
// measure, and central finite differences computed in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "runtime/base/random.h"
#include "runtime/kernels/cpu/gemm.h"

namespace tessera::cpu::test {

// n uniform floats in [lo, hi), reproducible from `seed`.
inline std::vector<float> RandomFloats(int64_t n, uint64_t seed, float lo = -1.0f,
                                       float hi = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = lo + (hi - lo) * rng.Uniform();
  return v;
}

inline std::vector<double> ToDouble(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// max |got - want| / max |want| (ggml's normalized error). Scale-free, and
// unlike an elementwise relative error it does not blow up on entries that
// are near zero by cancellation. Exact zeros everywhere compare absolutely.
inline double MaxRelativeError(const float* got, const double* want, int64_t n) {
  double max_diff = 0.0;
  double max_want = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(got[i]) || std::isnan(want[i])) return INFINITY;
    max_diff = std::max(max_diff, std::abs(static_cast<double>(got[i]) - want[i]));
    max_want = std::max(max_want, std::abs(want[i]));
  }
  return max_want > 0.0 ? max_diff / max_want : max_diff;
}
inline double MaxRelativeError(const std::vector<float>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return INFINITY;
  return MaxRelativeError(got.data(), want.data(), static_cast<int64_t>(got.size()));
}

// sum_i w[i] * y[i]: the scalar loss L = sum(dy * f(x)) whose gradient with
// respect to f's inputs is what a backward kernel computes from dy.
inline double Dot(const std::vector<double>& w, const std::vector<double>& y) {
  double sum = 0.0;
  for (size_t i = 0; i < w.size(); ++i) sum += w[i] * y[i];
  return sum;
}

// Central differences (L(x + h e_i) - L(x - h e_i)) / 2h for every i, with
// the loss evaluated in double (a reference forward, not the kernel), so the
// only error is O(h^2) truncation.
inline std::vector<double> NumericalGradient(
    const std::function<double(const std::vector<double>&)>& loss, std::vector<double> x,
    double h = 1e-4) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = loss(x);
    x[i] = saved - h;
    const double minus = loss(x);
    x[i] = saved;
    grad[i] = (plus - minus) / (2.0 * h);
  }
  return grad;
}

// Bitwise equality of two float buffers (NaN-safe, -0 != +0).
inline bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    uint32_t x, y;
    std::memcpy(&x, &a[i], 4);
    std::memcpy(&y, &b[i], 4);
    if (x != y) return false;
  }
  return true;
}

// Sets the kernels' thread count for one scope (determinism tests run the
// same call under different counts).
class ScopedNumThreads {
 public:
  explicit ScopedNumThreads(int threads) : saved_(NumThreads()) { SetNumThreads(threads); }
  ~ScopedNumThreads() { SetNumThreads(saved_); }
  ScopedNumThreads(const ScopedNumThreads&) = delete;
  ScopedNumThreads& operator=(const ScopedNumThreads&) = delete;

 private:
  int saved_;
};

}  // namespace tessera::cpu::test
