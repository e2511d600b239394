#include "runtime/kernels/cpu/modulate.h"

#include "runtime/kernels/cpu/parallel_loops.h"

namespace tessera::cpu {

void ModulateForward(const float* x, const float* shift, const float* scale, float* y,
                     int64_t batch, int64_t seq, int64_t dim, int64_t cond_stride) {
  const int64_t rows = batch * seq;
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / seq;
    const float* sh = shift + b * cond_stride;
    const float* sc = scale + b * cond_stride;
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) yr[j] = xr[j] * (1.0f + sc[j]) + sh[j];
  }
}

void ModulateBackward(const float* dy, const float* x, const float* scale, float* dx, float* dshift,
                      float* dscale, int64_t batch, int64_t seq, int64_t dim, int64_t cond_stride) {
  const int64_t rows = batch * seq;
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* sc = scale + (r / seq) * cond_stride;
    const float* dyr = dy + r * dim;
    float* dxr = dx + r * dim;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) dxr[j] = dyr[j] * (1.0f + sc[j]);
  }
  // Per-sample sums over the sequence: row r adds into sample r / seq.
  ForEachColumnBand(dim, rows * dim, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) {
      float* dsh = dshift + (r / seq) * cond_stride;
      float* dsc = dscale + (r / seq) * cond_stride;
      const float* dyr = dy + r * dim;
      const float* xr = x + r * dim;
#pragma omp simd
      for (int64_t j = c0; j < c1; ++j) {
        dsh[j] += dyr[j];
        dsc[j] += dyr[j] * xr[j];
      }
    }
  });
}

void GatedResidualForward(float* residual, const float* y, const float* gate, int64_t batch,
                          int64_t seq, int64_t dim, int64_t cond_stride) {
  const int64_t rows = batch * seq;
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate + (r / seq) * cond_stride;
    const float* yr = y + r * dim;
    float* res = residual + r * dim;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) res[j] += g[j] * yr[j];
  }
}

void GatedResidualBackward(const float* dresidual, const float* y, const float* gate, float* dy,
                           float* dgate, int64_t batch, int64_t seq, int64_t dim,
                           int64_t cond_stride) {
  const int64_t rows = batch * seq;
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate + (r / seq) * cond_stride;
    const float* dres = dresidual + r * dim;
    float* dyr = dy + r * dim;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) dyr[j] = dres[j] * g[j];
  }
  ForEachColumnBand(dim, rows * dim, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) {
      float* dg = dgate + (r / seq) * cond_stride;
      const float* dres = dresidual + r * dim;
      const float* yr = y + r * dim;
#pragma omp simd
      for (int64_t j = c0; j < c1; ++j) dg[j] += dres[j] * yr[j];
    }
  });
}

}  // namespace tessera::cpu
