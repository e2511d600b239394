#include "runtime/kernels/cpu/embedding.h"

#include <algorithm>
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

void GatherDotForward(const float* q, const float* rows, const int32_t* slots, int64_t tokens,
                      int64_t per_token, int64_t dim, float alpha, float beta, float* out) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(tokens * per_token * dim))
  for (int64_t t = 0; t < tokens; ++t) {
    const float* qt = q + t * dim;
    for (int64_t c = 0; c < per_token; ++c) {
      const float* row = rows + int64_t{slots[t * per_token + c]} * dim;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < dim; ++d) dot += qt[d] * row[d];
      float& o = out[t * per_token + c];
      o = alpha * dot + (beta == 0.0f ? 0.0f : beta * o);
    }
  }
}

void GatherDotBackward(const float* q, const float* rows, const int32_t* slots, int64_t tokens,
                       int64_t per_token, int64_t dim, float alpha, const float* dout, float* dq,
                       float* drows) {
  const int64_t work = tokens * per_token * dim;
#pragma omp parallel for schedule(static) if (ShouldParallelize(work))
  for (int64_t t = 0; t < tokens; ++t) {
    float* dqt = dq + t * dim;
    std::fill_n(dqt, dim, 0.0f);
    for (int64_t c = 0; c < per_token; ++c) {
      const float g = alpha * dout[t * per_token + c];
      const float* row = rows + int64_t{slots[t * per_token + c]} * dim;
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) dqt[d] += g * row[d];
    }
  }
  // Rows repeat across tokens: each thread owns a band of columns.
  ForEachColumnBand(dim, work, [&](int64_t c0, int64_t c1) {
    for (int64_t t = 0; t < tokens; ++t) {
      const float* qt = q + t * dim;
      for (int64_t c = 0; c < per_token; ++c) {
        const float g = alpha * dout[t * per_token + c];
        float* drow = drows + int64_t{slots[t * per_token + c]} * dim;
#pragma omp simd
        for (int64_t d = c0; d < c1; ++d) drow[d] += g * qt[d];
      }
    }
  });
}

}  // namespace tessera::cpu
