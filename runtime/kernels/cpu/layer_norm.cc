#include "runtime/kernels/cpu/layer_norm.h"

#include <cmath>

#include "runtime/kernels/cpu/parallel_loops.h"

namespace tessera::cpu {
namespace {

// Statistics accumulate in double: a row of thousands of floats summed in
// float loses digits that the normalized output then amplifies.
double RowMean(const float* x, int64_t dim) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < dim; ++j) sum += x[j];
  return sum / static_cast<double>(dim);
}

// Two-pass variance: no cancellation when |mean| >> std.
double RowVariance(const float* x, double mean, int64_t dim) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < dim; ++j) {
    const double d = x[j] - mean;
    sum += d * d;
  }
  return sum / static_cast<double>(dim);
}

// A row's mean and 1 / sqrt(variance + eps), as the float values the
// normalization and the backward use.
struct RowStats {
  float mean, rstd;
};
RowStats LayerNormRowStats(const float* x, int64_t dim, float eps) {
  const double mu = RowMean(x, dim);
  const double var = RowVariance(x, mu, dim);
  return {static_cast<float>(mu), static_cast<float>(1.0 / std::sqrt(var + eps))};
}

double RowMeanSquare(const float* x, int64_t dim) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < dim; ++j) sum += static_cast<double>(x[j]) * x[j];
  return sum / static_cast<double>(dim);
}

}  // namespace

void LayerNormForward(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                      float* rstd, int64_t rows, int64_t dim, float eps) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    // Plain locals, not a structured binding: clang does not let OpenMP
    // simd regions refer to those.
    const RowStats stats = LayerNormRowStats(xr, dim, eps);
    const float m = stats.mean, s = stats.rstd;
    mean[r] = m;
    rstd[r] = s;
    if (gamma == nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) yr[j] = (xr[j] - m) * s;
    } else if (beta == nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) yr[j] = (xr[j] - m) * s * gamma[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) yr[j] = (xr[j] - m) * s * gamma[j] + beta[j];
    }
  }
}

// With xhat = (x - mean) * rstd and g = dy * gamma:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   dgamma += sum_rows dy * xhat,  dbeta += sum_rows dy
void LayerNormBackward(const float* dy, const float* x, const float* gamma, const float* mean,
                       const float* rstd, float* dx, float* dgamma, float* dbeta, int64_t rows,
                       int64_t dim) {
  const float inv_dim = 1.0f / static_cast<float>(dim);
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* dyr = dy + r * dim;
    const float* xr = x + r * dim;
    float* dxr = dx + r * dim;
    const float m = mean[r];
    const float s = rstd[r];
    float sum_g = 0.0f;
    float sum_g_xhat = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_g_xhat)
    for (int64_t j = 0; j < dim; ++j) {
      const float g = gamma != nullptr ? dyr[j] * gamma[j] : dyr[j];
      sum_g += g;
      sum_g_xhat += g * (xr[j] - m) * s;
    }
    const float mean_g = sum_g * inv_dim;
    const float mean_g_xhat = sum_g_xhat * inv_dim;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) {
      const float g = gamma != nullptr ? dyr[j] * gamma[j] : dyr[j];
      const float xhat = (xr[j] - m) * s;
      dxr[j] = s * (g - mean_g - xhat * mean_g_xhat);
    }
  }
  if (dgamma == nullptr && dbeta == nullptr) return;
  ForEachColumnBand(dim, rows * dim, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* dyr = dy + r * dim;
      const float* xr = x + r * dim;
      const float m = mean[r];
      const float s = rstd[r];
      if (dgamma != nullptr) {
#pragma omp simd
        for (int64_t j = c0; j < c1; ++j) dgamma[j] += dyr[j] * ((xr[j] - m) * s);
      }
      if (dbeta != nullptr) {
#pragma omp simd
        for (int64_t j = c0; j < c1; ++j) dbeta[j] += dyr[j];
      }
    }
  });
}

void LayerNormModulateForward(const float* x, const float* shift, const float* scale, float* y,
                              float* mean, float* rstd, int64_t batch, int64_t seq, int64_t dim,
                              int64_t cond_stride, float eps) {
  const int64_t rows = batch * seq;
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    const float* sh = shift + (r / seq) * cond_stride;
    const float* sc = scale + (r / seq) * cond_stride;
    float* yr = y + r * dim;
    // Plain locals, not a structured binding: clang does not let OpenMP
    // simd regions refer to those.
    const RowStats stats = LayerNormRowStats(xr, dim, eps);
    const float m = stats.mean, s = stats.rstd;
    mean[r] = m;
    rstd[r] = s;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) {
      const float h = (xr[j] - m) * s;
      yr[j] = h * (1.0f + sc[j]) + sh[j];
    }
  }
}

void LayerNormModulateBackward(const float* dy, const float* x, const float* mean,
                               const float* rstd, const float* scale, float* dx, float* dshift,
                               float* dscale, int64_t batch, int64_t seq, int64_t dim,
                               int64_t cond_stride) {
  const int64_t rows = batch * seq;
  const float inv_dim = 1.0f / static_cast<float>(dim);
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* dyr = dy + r * dim;
    const float* xr = x + r * dim;
    const float* sc = scale + (r / seq) * cond_stride;
    float* dxr = dx + r * dim;
    const float m = mean[r];
    const float s = rstd[r];
    float sum_g = 0.0f;
    float sum_g_xhat = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_g_xhat)
    for (int64_t j = 0; j < dim; ++j) {
      const float g = dyr[j] * (1.0f + sc[j]);
      sum_g += g;
      sum_g_xhat += g * (xr[j] - m) * s;
    }
    const float mean_g = sum_g * inv_dim;
    const float mean_g_xhat = sum_g_xhat * inv_dim;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) {
      const float g = dyr[j] * (1.0f + sc[j]);
      const float xhat = (xr[j] - m) * s;
      dxr[j] = s * (g - mean_g - xhat * mean_g_xhat);
    }
  }
  // Per-sample sums over the sequence: row r adds into sample r / seq, in
  // row order within each band of columns (independent of the threads).
  ForEachColumnBand(dim, rows * dim, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) {
      float* dsh = dshift + (r / seq) * cond_stride;
      float* dsc = dscale + (r / seq) * cond_stride;
      const float* dyr = dy + r * dim;
      const float* xr = x + r * dim;
      const float m = mean[r];
      const float s = rstd[r];
#pragma omp simd
      for (int64_t j = c0; j < c1; ++j) {
        dsh[j] += dyr[j];
        dsc[j] += dyr[j] * ((xr[j] - m) * s);
      }
    }
  });
}

void RmsNormForward(const float* x, const float* gamma, float* y, float* rstd, int64_t rows,
                    int64_t dim, float eps) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    const float s = static_cast<float>(1.0 / std::sqrt(RowMeanSquare(xr, dim) + eps));
    rstd[r] = s;
    if (gamma == nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) yr[j] = xr[j] * s;
    } else {
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) yr[j] = xr[j] * s * gamma[j];
    }
  }
}

// With xhat = x * rstd and g = dy * gamma:
//   dx = rstd * (g - xhat * mean(g * xhat)),  dgamma += sum_rows dy * xhat
void RmsNormBackward(const float* dy, const float* x, const float* gamma, const float* rstd,
                     float* dx, float* dgamma, int64_t rows, int64_t dim) {
  const float inv_dim = 1.0f / static_cast<float>(dim);
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* dyr = dy + r * dim;
    const float* xr = x + r * dim;
    float* dxr = dx + r * dim;
    const float s = rstd[r];
    float sum_g_xhat = 0.0f;
#pragma omp simd reduction(+ : sum_g_xhat)
    for (int64_t j = 0; j < dim; ++j) {
      const float g = gamma != nullptr ? dyr[j] * gamma[j] : dyr[j];
      sum_g_xhat += g * (xr[j] * s);
    }
    const float mean_g_xhat = sum_g_xhat * inv_dim;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) {
      const float g = gamma != nullptr ? dyr[j] * gamma[j] : dyr[j];
      dxr[j] = s * (g - (xr[j] * s) * mean_g_xhat);
    }
  }
  if (dgamma == nullptr) return;
  ForEachColumnBand(dim, rows * dim, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* dyr = dy + r * dim;
      const float* xr = x + r * dim;
      const float s = rstd[r];
#pragma omp simd
      for (int64_t j = c0; j < c1; ++j) dgamma[j] += dyr[j] * (xr[j] * s);
    }
  });
}

}  // namespace tessera::cpu
