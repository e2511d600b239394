// GEMM through cuBLASLt, fp32, row-major; same semantics as tessera::cpu::Gemm
// (runtime/kernels/cpu/gemm.h):
//
//   C[m, n] = alpha * op(A) @ op(B) + beta * C
//   op(A) is [m, k]: A is [m, k] (lda >= k), or [k, m] when trans_a (lda >= m).
//   op(B) is [k, n]: B is [k, n] (ldb >= n), or [n, k] when trans_b (ldb >= k).
//
// All matrix pointers are device pointers. beta == 0 means C is not read (so
// it may hold NaN garbage), as in BLAS. k == 0 gives C = beta * C.
//
// Compute is strict fp32 (CUBLAS_COMPUTE_32F, no TF32), so results match the
// CPU kernel to fp32 rounding.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::cuda {

// A cuBLASLt handle and a workspace on the device current at Create.
// The workspace is shared by every call: calls made with one context must be
// ordered on one stream (or synchronized by the caller). One context per
// compute stream is the intended use.
class GemmContext {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;  // Hopper's recommendation

  static absl::StatusOr<std::unique_ptr<GemmContext>> Create(
      size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~GemmContext();
  GemmContext(const GemmContext&) = delete;
  GemmContext& operator=(const GemmContext&) = delete;

  cublasLtHandle_t handle() const { return handle_; }
  void* workspace() const { return workspace_; }
  size_t workspace_bytes() const { return workspace_bytes_; }

 private:
  GemmContext() = default;

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

absl::Status Gemm(GemmContext& context, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                  float* c, int64_t ldc, cudaStream_t stream);

// `batch` independent GEMMs; matrix i starts at a + i*stride_a (etc.).
absl::Status GemmBatched(GemmContext& context, bool trans_a, bool trans_b, int64_t batch, int64_t m,
                         int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                         int64_t stride_a, const float* b, int64_t ldb, int64_t stride_b,
                         float beta, float* c, int64_t ldc, int64_t stride_c, cudaStream_t stream);

}  // namespace tessera::cuda
