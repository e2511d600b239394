#include "runtime/kernels/cpu/embedding.h"

#include <cstring>

#include "runtime/kernels/cpu/parallel_loops.h"

namespace tessera::cpu {

void EmbeddingForward(const int32_t* ids, const float* table, float* out, int64_t n, int64_t dim) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(n * dim))
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(out + i * dim, table + static_cast<int64_t>(ids[i]) * dim,
                static_cast<size_t>(dim) * sizeof(float));
  }
}

// Repeated ids make rows of dtable collide, so threads split the columns, not
// the ids: each element still receives its contributions in id order.
void EmbeddingBackward(const int32_t* ids, const float* dout, float* dtable, int64_t n,
                       int64_t dim) {
  ForEachColumnBand(dim, n * dim, [&](int64_t c0, int64_t c1) {
    for (int64_t i = 0; i < n; ++i) {
      const float* src = dout + i * dim;
      float* dst = dtable + static_cast<int64_t>(ids[i]) * dim;
#pragma omp simd
      for (int64_t j = c0; j < c1; ++j) dst[j] += src[j];
    }
  });
}

}  // namespace tessera::cpu
