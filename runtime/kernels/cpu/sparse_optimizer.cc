// The row-sharded table's sparse optimizer (optimizer.h's SparseRowUpdate),
// in a file of its own: it is compiled without floating-point contraction
// (runtime/CMakeLists.txt), so each product and sum is rounded on its own as
// the CUDA kernel (which uses explicitly rounded operations) rounds it, and
// the two backends give the same bits.
#include <cmath>

#include "runtime/kernels/cpu/optimizer.h"
#include "runtime/kernels/cpu/parallel_loops.h"

namespace tessera::cpu {

void SparseRowUpdate(const SparseRowScalars& s, const int32_t* rows, int64_t count, int64_t dim,
                     const float* grads, float* params, float* m, float* v, float* sums) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(count * dim))
  for (int64_t k = 0; k < count; ++k) {
    const float* gk = grads + k * dim;
    const int64_t at = int64_t{rows[k]} * dim;
    float* p = params + at;
    if (s.adam) {
      for (int64_t d = 0; d < dim; ++d) {
        const float g = gk[d] * s.grad_scale;
        const float mi = static_cast<float>(s.beta1 * m[at + d] + (1 - s.beta1) * g);
        const float vi = static_cast<float>(s.beta2 * v[at + d] + (1 - s.beta2) * g * g);
        m[at + d] = mi;
        v[at + d] = vi;
        p[d] -= static_cast<float>(s.lr * (mi / s.bias1) / (std::sqrt(vi / s.bias2) + s.eps));
      }
    } else {
      double mean_square = 0;
      for (int64_t d = 0; d < dim; ++d) {
        const float g = gk[d] * s.grad_scale;
        mean_square += double(g) * g / static_cast<double>(dim);
      }
      const float sum = static_cast<float>(sums[rows[k]] + mean_square);
      sums[rows[k]] = sum;
      // The square root of the float accumulator, in float (as stored).
      const float root = std::sqrt(sum);
      for (int64_t d = 0; d < dim; ++d) {
        const float g = gk[d] * s.grad_scale;
        p[d] -= static_cast<float>(s.lr * g / (root + s.eps));
      }
    }
  }
}

}  // namespace tessera::cpu
