#include "runtime/kernels/cpu/gemm.h"

#include <omp.h>

#include "oneapi/dnnl/dnnl.h"
#include "runtime/base/status.h"
#include "runtime/kernels/cpu/parallel_loops.h"

namespace tessera::cpu {
namespace {

// BLAS semantics for k == 0: the product is empty, C = beta * C; beta == 0
// overwrites C without reading it (so stale NaNs do not survive).
void ScaleC(int64_t m, int64_t n, float beta, float* c, int64_t ldc) {
  if (beta == 1.0f) return;
#pragma omp parallel for if (ShouldParallelize(m * n))
  for (int64_t i = 0; i < m; ++i) {
    float* row = c + i * ldc;
    if (beta == 0.0f) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) row[j] = 0.0f;
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) row[j] *= beta;
    }
  }
}

}  // namespace

void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    ScaleC(m, n, beta, c, ldc);
    return;
  }
  const dnnl_status_t status = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha,
                                          a, lda, b, ldb, beta, c, ldc);
  // Only invalid arguments (bad leading dimensions) can fail: a caller bug.
  TESSERA_CHECK(status == dnnl_success);
}

void GemmBatched(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n, int64_t k,
                 float alpha, const float* a, int64_t lda, int64_t stride_a, const float* b,
                 int64_t ldb, int64_t stride_b, float beta, float* c, int64_t ldc,
                 int64_t stride_c) {
  if (batch == 0 || m == 0 || n == 0) return;
#pragma omp parallel for schedule(static) if (GemmBatchPerThread(batch, m, n, k))
  for (int64_t i = 0; i < batch; ++i) {
    Gemm(trans_a, trans_b, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b, ldb, beta,
         c + i * stride_c, ldc);
  }
}

void SetNumThreads(int threads) { omp_set_num_threads(threads < 1 ? 1 : threads); }

int NumThreads() { return omp_get_max_threads(); }

}  // namespace tessera::cpu
