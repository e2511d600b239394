#include "runtime/kernels/cpu/flat.h"

#include <algorithm>
#include <vector>

#include "runtime/base/random.h"
#include "runtime/kernels/cpu/parallel_loops.h"

namespace tessera::cpu {
namespace {
// Block size of the deterministic reduction: each block is summed by one
// thread in a fixed order, then the block sums are added in index order.
constexpr int64_t kSumBlock = 1 << 14;
}  // namespace

void Scale(float* x, int64_t n, float scale) {
#pragma omp parallel for simd schedule(static) if (ShouldParallelize(n))
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

double SumSquares(const float* x, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  std::vector<double> sums(static_cast<size_t>(blocks));
#pragma omp parallel for schedule(static) if (ShouldParallelize(n))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t first = b * kSumBlock;
    const int64_t last = std::min(n, first + kSumBlock);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = first; i < last; ++i) sum += static_cast<double>(x[i]) * x[i];
    sums[static_cast<size_t>(b)] = sum;
  }
  double total = 0.0;
  for (double sum : sums) total += sum;
  return total;
}

void AccumulateScalars(const double* x, int64_t n, double weight, double* acc) {
  for (int64_t i = 0; i < n; ++i) *acc += weight * x[i];
}

void GatherElements(const float* in, const int32_t* index, float* out, int64_t n) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(n))
  for (int64_t i = 0; i < n; ++i) out[i] = in[index[i]];
}

void ScatterElements(const float* in, const int32_t* index, float* out, int64_t n) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(n))
  for (int64_t i = 0; i < n; ++i) out[index[i]] = in[i];
}

void CounterDropoutMask(const int64_t* row_keys, int64_t rows, int64_t width, uint64_t key,
                        float rate, float* mask) {
  const float keep = 1.0f / (1.0f - rate);
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * width))
  for (int64_t r = 0; r < rows; ++r) {
    const uint64_t first = static_cast<uint64_t>(row_keys[r]) * static_cast<uint64_t>(width);
    for (int64_t d = 0; d < width; ++d) {
      mask[r * width + d] = CounterUniform(key, first + d) < rate ? 0.0f : keep;
    }
  }
}

}  // namespace tessera::cpu
