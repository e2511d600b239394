#include "runtime/kernels/cpu/softmax.h"

#include <cmath>
#include <limits>

#include "runtime/kernels/cpu/parallel_loops.h"
#include "runtime/kernels/cpu/vector_math.h"

namespace tessera::cpu {

float SoftmaxRow(const float* x, float* y, int64_t dim) {
  // Subtracting the row max keeps every exponent <= 0: no overflow.
  float max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max)
  for (int64_t j = 0; j < dim; ++j) max = x[j] > max ? x[j] : max;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < dim; ++j) {
    y[j] = FastExp(x[j] - max);
    sum += y[j];
  }
  const float inv_sum = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < dim; ++j) y[j] *= inv_sum;
  return max + std::log(sum);
}

void SoftmaxForward(const float* x, float* y, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) SoftmaxRow(x + r * dim, y + r * dim, dim);
}

void SoftmaxBackward(const float* dy, const float* y, float* dx, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* dyr = dy + r * dim;
    const float* yr = y + r * dim;
    float* dxr = dx + r * dim;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < dim; ++j) dot += dyr[j] * yr[j];
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) dxr[j] = yr[j] * (dyr[j] - dot);
  }
}

}  // namespace tessera::cpu
