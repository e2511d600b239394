#include "runtime/kernels/cpu/optimizer.h"

#include <cmath>

#include "runtime/kernels/cpu/parallel_loops.h"

namespace tessera::cpu {

void AdamWUpdate(const AdamWScalars& s, std::span<const AdamWSegment> segments, float* params,
                 const float* grads, float* m, float* v, float grad_scale) {
  const int64_t size = segments.empty() ? 0 : segments.back().end;
  // Segments are disjoint, so the threads need no barrier between them.
#pragma omp parallel if (ShouldParallelize(size))
  for (const AdamWSegment& segment : segments) {
    const float keep = segment.decay ? s.decay_keep : 1.0f;
#pragma omp for simd schedule(static) nowait
    for (int64_t i = segment.begin; i < segment.end; ++i) {
      const float g = grads[i] * grad_scale;
      const float mi = s.beta1 * m[i] + s.one_minus_beta1 * g;
      const float vi = s.beta2 * v[i] + s.one_minus_beta2 * (g * g);
      m[i] = mi;
      v[i] = vi;
      params[i] = params[i] * keep - s.step_size * mi / (std::sqrt(vi) * s.inv_sqrt_bias2 + s.eps);
    }
  }
}

void StepGuard(const double* norm_squared, double max_norm, int64_t step, double* diverged_step,
               float* scale) {
  const double norm = std::sqrt(*norm_squared);
  if (*diverged_step == 0 && !std::isfinite(norm)) *diverged_step = static_cast<double>(step);
  if (*diverged_step != 0) {
    *scale = 0.0f;
    return;
  }
  *scale = max_norm > 0 && norm > max_norm ? static_cast<float>(max_norm / norm) : 1.0f;
}

void EmaUpdate(float* ema, const float* params, int64_t n, float blend) {
#pragma omp parallel for simd schedule(static) if (ShouldParallelize(n))
  for (int64_t i = 0; i < n; ++i) ema[i] += blend * (params[i] - ema[i]);
}

}  // namespace tessera::cpu
