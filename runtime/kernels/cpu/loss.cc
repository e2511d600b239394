#include "runtime/kernels/cpu/loss.h"

#include <cmath>
#include <limits>
#include <vector>

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

void VocabCrossEntropyStats(const float* logits, const int32_t* targets, int64_t rows,
                            int64_t columns, int64_t column_offset, double* stats) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * columns * 8))
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * columns;
    double max = -std::numeric_limits<double>::infinity(), sum = 0;
    int64_t argmax = 0;
    for (int64_t j = 0; j < columns; ++j) {
      if (static_cast<double>(row[j]) > max) {
        max = row[j];
        argmax = j;
      }
    }
    for (int64_t j = 0; j < columns; ++j) sum += std::exp(static_cast<double>(row[j]) - max);
    const int64_t local = targets[r] - column_offset;
    double* out = stats + r * 4;
    out[0] = max;
    out[1] = sum;
    out[2] = local >= 0 && local < columns ? static_cast<double>(row[local]) : 0.0;
    out[3] = static_cast<double>(column_offset + argmax);
  }
}

void VocabCrossEntropyCombine(const float* logits, const double* all_stats, int64_t ranks,
                              const int32_t* targets, float* probs, int64_t rows, int64_t columns,
                              double* totals) {
  // Per-row terms in parallel, summed in row order below (any thread count
  // gives the same bits).
  std::vector<double> row_loss(static_cast<size_t>(rows));
  std::vector<uint8_t> row_hit(static_cast<size_t>(rows));
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * columns * 8))
  for (int64_t r = 0; r < rows; ++r) {
    double max = -std::numeric_limits<double>::infinity(), argmax = -1;
    for (int64_t k = 0; k < ranks; ++k) {
      // Ranks hold the vocabulary in rank order: the first with the maximum
      // holds its first occurrence.
      const double* s = all_stats + (k * rows + r) * 4;
      if (s[0] > max) {
        max = s[0];
        argmax = s[3];
      }
    }
    double sum = 0, target = 0;
    for (int64_t k = 0; k < ranks; ++k) {
      const double* s = all_stats + (k * rows + r) * 4;
      sum += s[1] * std::exp(s[0] - max);
      target += s[2];
    }
    const double log_sum = std::log(sum) + max;
    row_loss[r] = log_sum - target;
    row_hit[r] = argmax == static_cast<double>(targets[r]);
    const float* row = logits + r * columns;
    float* p = probs + r * columns;
    for (int64_t j = 0; j < columns; ++j) {
      p[j] = static_cast<float>(std::exp(static_cast<double>(row[j]) - log_sum));
    }
  }
  double loss = 0, hits = 0;
  for (int64_t r = 0; r < rows; ++r) {
    loss += row_loss[r];
    hits += row_hit[r];
  }
  totals[0] = loss;
  totals[1] = hits;
}

void VocabCrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits,
                               int64_t rows, int64_t columns, int64_t column_offset, float scale) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * columns))
  for (int64_t r = 0; r < rows; ++r) {
    const float* p = probs + r * columns;
    float* d = dlogits + r * columns;
    for (int64_t j = 0; j < columns; ++j) d[j] = scale * p[j];
    const int64_t local = targets[r] - column_offset;
    if (local >= 0 && local < columns) d[local] = scale * (p[local] - 1);
  }
}

}  // namespace tessera::cpu
