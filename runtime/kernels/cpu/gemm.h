// GEMM through oneDNN (dnnl_sgemm), row-major.
//
//   C[m, n] = alpha * op(A) @ op(B) + beta * C
//   op(A) is [m, k]: A is [m, k] (lda >= k), or [k, m] when trans_a (lda >= m).
//   op(B) is [k, n]: B is [k, n] (ldb >= n), or [n, k] when trans_b (ldb >= k).
#pragma once

#include <cstdint>

#include "runtime/kernels/cpu/parallel_loops.h"

namespace tessera::cpu {

void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
          int64_t ldc);

// `batch` independent GEMMs; matrix i starts at a + i*stride_a (etc.).
// Inside a parallel region oneDNN runs single-threaded, so many small
// matrices (attention heads) go one per thread; large ones use all threads
// each.
inline bool GemmBatchPerThread(int64_t batch, int64_t m, int64_t n, int64_t k) {
  constexpr int64_t kSmallGemmFlops = int64_t{1} << 21;  // multiply-adds per matrix
  return batch > 1 && m * n * k < kSmallGemmFlops && ShouldParallelize(batch * m * n * (k + 1));
}
void GemmBatched(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n, int64_t k,
                 float alpha, const float* a, int64_t lda, int64_t stride_a, const float* b,
                 int64_t ldb, int64_t stride_b, float beta, float* c, int64_t ldc,
                 int64_t stride_c);

// Sets the number of threads oneDNN and our own loops use in this process.
void SetNumThreads(int threads);
int NumThreads();

}  // namespace tessera::cpu
