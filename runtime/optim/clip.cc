#include "runtime/optim/clip.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace tessera {
namespace {
// Block size of the deterministic reduction: each block is summed by one
// thread in a fixed order, then the block sums are added in index order.
constexpr int64_t kBlock = 1 << 14;
constexpr int64_t kParallelThreshold = 1 << 15;
}  // namespace

double GradNormSquaredPartial(const float* g, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> sums(static_cast<size_t>(blocks));
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t first = b * kBlock;
    const int64_t last = std::min(n, first + kBlock);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = first; i < last; ++i) sum += static_cast<double>(g[i]) * g[i];
    sums[static_cast<size_t>(b)] = sum;
  }
  double total = 0.0;
  for (double sum : sums) total += sum;
  return total;
}

double ClipScale(double total_norm, double max_norm) {
  if (max_norm <= 0 || !std::isfinite(total_norm) || total_norm <= max_norm) return 1.0;
  return max_norm / total_norm;
}

void ScaleInPlace(float* x, int64_t n, float scale) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

}  // namespace tessera
