#include "runtime/kernels/cpu/loss.h"

#include <cmath>
#include <limits>

#include "runtime/kernels/cpu/parallel_loops.h"
#include "runtime/kernels/cpu/softmax.h"
#include "runtime/kernels/cpu/vector_math.h"

namespace tessera::cpu {
namespace {

// Losses are summed as kChunks fixed partial sums added in order, so the
// result does not depend on the thread count and needs no heap scratch.
constexpr int64_t kChunks = 64;

template <typename ChunkSum>
double SumOverChunks(int64_t n, int64_t work, ChunkSum&& chunk_sum) {
  double partial[kChunks] = {};
#pragma omp parallel for schedule(static) if (ShouldParallelize(work))
  for (int64_t c = 0; c < kChunks; ++c) {
    partial[c] = chunk_sum(n * c / kChunks, n * (c + 1) / kChunks);
  }
  double total = 0.0;
  for (int64_t c = 0; c < kChunks; ++c) total += partial[c];
  return total;
}

}  // namespace

double MseForward(const float* pred, const float* target, int64_t n) {
  if (n == 0) return 0.0;
  const double total = SumOverChunks(n, n, [&](int64_t begin, int64_t end) {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = begin; i < end; ++i) {
      const double d = static_cast<double>(pred[i]) - target[i];
      sum += d * d;
    }
    return sum;
  });
  return total / static_cast<double>(n);
}

void MseBackward(const float* pred, const float* target, float* dpred, int64_t n, float scale) {
  if (n == 0) return;
  const float factor = static_cast<float>(2.0 * scale / static_cast<double>(n));
#pragma omp parallel for simd schedule(static) if (parallel : ShouldParallelize(n))
  for (int64_t i = 0; i < n; ++i) dpred[i] = factor * (pred[i] - target[i]);
}

double CrossEntropyForward(const float* logits, const int32_t* targets, float* probs, int64_t rows,
                           int64_t classes) {
  if (rows == 0) return 0.0;
  const double total = SumOverChunks(rows, rows * classes, [&](int64_t begin, int64_t end) {
    double sum_loss = 0.0;
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = logits + r * classes;
      // -log p_t = log-sum-exp - x_t, from the logits: finite even where p_t
      // underflows to 0 in float.
      const float lse = SoftmaxRow(xr, probs + r * classes, classes);
      sum_loss += static_cast<double>(lse) - static_cast<double>(xr[targets[r]]);
    }
    return sum_loss;
  });
  return total / static_cast<double>(rows);
}

void CrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits, int64_t rows,
                          int64_t classes, float scale) {
  if (rows == 0) return;
  const float factor = static_cast<float>(scale / static_cast<double>(rows));
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * classes))
  for (int64_t r = 0; r < rows; ++r) {
    const float* pr = probs + r * classes;
    float* dr = dlogits + r * classes;
#pragma omp simd
    for (int64_t j = 0; j < classes; ++j) dr[j] = factor * pr[j];
    dr[targets[r]] = factor * (pr[targets[r]] - 1.0f);
  }
}

}  // namespace tessera::cpu
