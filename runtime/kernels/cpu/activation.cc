#include "runtime/kernels/cpu/activation.h"

#include "runtime/kernels/cpu/parallel_loops.h"
#include "runtime/kernels/cpu/vector_math.h"

namespace tessera::cpu {
namespace {

// GELU (tanh form) rewritten with 0.5 * (1 + tanh(u)) = sigmoid(2u), which
// avoids the cancellation of 1 + tanh(u) for negative u.
constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluC = 0.044715f;

}  // namespace

void SiluForward(const float* x, float* y, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : ShouldParallelize(n))
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * FastSigmoid(x[i]);
}

// d/dx x s(x) = s (1 + x (1 - s))
void SiluBackward(const float* dy, const float* x, float* dx, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : ShouldParallelize(n))
  for (int64_t i = 0; i < n; ++i) {
    const float s = FastSigmoid(x[i]);
    dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
  }
}

void GeluForward(const float* x, float* y, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : ShouldParallelize(n))
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float u = kGeluK * (v + kGeluC * v * v * v);
    y[i] = v * FastSigmoid(2.0f * u);
  }
}

// gelu = x s(2u):  d/dx = s + x * s (1 - s) * 2 u',  u' = k (1 + 3 c x^2)
void GeluBackward(const float* dy, const float* x, float* dx, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : ShouldParallelize(n))
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float u = kGeluK * (v + kGeluC * v * v * v);
    const float du = kGeluK * (1.0f + 3.0f * kGeluC * v * v);
    const float s = FastSigmoid(2.0f * u);
    dx[i] = dy[i] * (s + v * s * (1.0f - s) * 2.0f * du);
  }
}

void SwigluForward(const float* x, float* y, int64_t rows, int64_t hidden) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * hidden))
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = x + r * 2 * hidden;
    const float* up = gate + hidden;
    float* yr = y + r * hidden;
#pragma omp simd
    for (int64_t j = 0; j < hidden; ++j) yr[j] = gate[j] * FastSigmoid(gate[j]) * up[j];
  }
}

// dgate = dy * up * silu'(gate), dup = dy * silu(gate)
void SwigluBackward(const float* dy, const float* x, float* dx, int64_t rows, int64_t hidden) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * hidden))
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = x + r * 2 * hidden;
    const float* up = gate + hidden;
    const float* dyr = dy + r * hidden;
    float* dgate = dx + r * 2 * hidden;
    float* dup = dgate + hidden;
#pragma omp simd
    for (int64_t j = 0; j < hidden; ++j) {
      const float g = gate[j];
      const float s = FastSigmoid(g);
      dgate[j] = dyr[j] * up[j] * s * (1.0f + g * (1.0f - s));
      dup[j] = dyr[j] * g * s;
    }
  }
}

void ReluSquaredForward(const float* x, float* y, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : ShouldParallelize(n))
  for (int64_t i = 0; i < n; ++i) {
    const float r = x[i] > 0.0f ? x[i] : 0.0f;
    y[i] = r * r;
  }
}

void ReluSquaredBackward(const float* dy, const float* x, float* dx, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : ShouldParallelize(n))
  for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0.0f ? 2.0f * x[i] * dy[i] : 0.0f;
}

void AddInPlace(float* y, const float* x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : ShouldParallelize(n))
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void AddScaledRows(float* y, const float* scale, const float* x, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float s = scale[r];
    float* yr = y + r * dim;
    const float* xr = x + r * dim;
    for (int64_t j = 0; j < dim; ++j) yr[j] += s * xr[j];
  }
}

void AddBiasRows(float* y, const float* bias, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    float* yr = y + r * dim;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) yr[j] += bias[j];
  }
}

void SumRowsAccumulate(const float* dy, float* dbias, int64_t rows, int64_t dim) {
  ForEachColumnBand(dim, rows * dim, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* dyr = dy + r * dim;
#pragma omp simd
      for (int64_t j = c0; j < c1; ++j) dbias[j] += dyr[j];
    }
  });
}

}  // namespace tessera::cpu
