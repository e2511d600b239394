// Finite-difference gradient checks for layers and models (fp32 forward,
// double loss): for sampled coordinates i of a buffer x, compares the analytic
// gradient g[i] with (L(x + e_i h) - L(x - e_i h)) / 2h.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "runtime/base/random.h"
#include "runtime/tensor/tensor.h"

namespace tessera::testing {

inline void FillNormal(float* x, int64_t n, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  for (int64_t i = 0; i < n; ++i) x[i] = scale * rng.Normal();
}

inline Tensor RandomTensor(Shape shape, uint64_t seed, float scale = 1.0f) {
  Tensor t = Tensor::Empty(DType::kF32, shape);
  FillNormal(t.data<float>(), t.numel(), seed, scale);
  return t;
}

// sum(weights * y) in double.
inline double WeightedSum(const Tensor& y, const Tensor& weights) {
  double sum = 0;
  const float* a = y.data<float>();
  const float* w = weights.data<float>();
  for (int64_t i = 0; i < y.numel(); ++i) sum += static_cast<double>(a[i]) * w[i];
  return sum;
}

struct GradientCheckOptions {
  int samples = 24;         // coordinates checked per buffer
  float step = 1e-2f;       // h
  double tolerance = 2e-2;  // on |g - fd| / max(|g|, |fd|, floor)
  double floor = 1e-2;
  uint64_t seed = 7;
};

// `loss` recomputes the scalar loss from the current contents of `x`.
inline void CheckGradient(const std::string& what, float* x, const float* analytic, int64_t n,
                          const std::function<double()>& loss,
                          const GradientCheckOptions& options = {}) {
  Rng rng(options.seed);
  const int samples = static_cast<int>(std::min<int64_t>(options.samples, n));
  for (int s = 0; s < samples; ++s) {
    const int64_t i = samples == n ? s : static_cast<int64_t>(rng.Below(static_cast<uint64_t>(n)));
    const float saved = x[i];
    x[i] = saved + options.step;
    const double plus = loss();
    x[i] = saved - options.step;
    const double minus = loss();
    x[i] = saved;
    const double numeric = (plus - minus) / (2.0 * options.step);
    const double g = analytic[i];
    const double scale = std::max({std::fabs(g), std::fabs(numeric), options.floor});
    EXPECT_LE(std::fabs(g - numeric) / scale, options.tolerance)
        << what << "[" << i << "]: analytic " << g << " vs finite difference " << numeric;
  }
}

}  // namespace tessera::testing
