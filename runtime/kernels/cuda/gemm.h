// GEMM through cuBLASLt, row-major; same semantics as tessera::cpu::Gemm
// (runtime/kernels/cpu/gemm.h):
//
//   C[m, n] = alpha * op(A) @ op(B) + beta * C
//   op(A) is [m, k]: A is [m, k] (lda >= k), or [k, m] when trans_a (lda >= m).
//   op(B) is [k, n]: B is [k, n] (ldb >= n), or [n, k] when trans_b (ldb >= k).
//
// All matrix pointers are device pointers. beta == 0 means C is not read (so
// it may hold NaN garbage), as in BLAS. k == 0 gives C = beta * C.
//
// Inputs are fp32 (strict fp32 compute, CUBLAS_COMPUTE_32F, no TF32: results
// match the CPU kernel to fp32 rounding) or bf16: A and B are rounded to bf16
// (round to nearest even, as cpu::GemmBf16) into the context's scratch and
// multiplied on the tensor cores with fp32 accumulation; C stays fp32.
//
// Each distinct call shape (sizes, leading dimensions, strides, transposes,
// alignment, inputs) builds its cuBLASLt descriptors and asks the heuristic
// once; later calls of that shape reuse the plan (a training step repeats the
// same few dozen shapes).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::cuda {

enum class GemmInputs : uint8_t { kFp32, kBf16 };

struct GemmPlanCache;  // gemm.cu

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
  GemmPlanCache& plans() { return *plans_; }
  // Device scratch of at least `bytes` for bf16 copies of A and B. It grows
  // (never shrinks) the first time a larger GEMM runs, so a steady-state step
  // allocates nothing; growing frees the old buffer (cudaFree waits for the
  // work queued on it).
  absl::StatusOr<void*> Bf16Scratch(size_t bytes);
  size_t bf16_scratch_bytes() const { return scratch_bytes_; }

 private:
  GemmContext();

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  std::unique_ptr<GemmPlanCache> plans_;
};

absl::Status Gemm(GemmContext& context, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                  float* c, int64_t ldc, cudaStream_t stream,
                  GemmInputs inputs = GemmInputs::kFp32);

// Gemm whose A and/or B come with bf16 copies (bf16 bit patterns of the same
// matrix, same leading dimension: RoundToBf16): kBf16 inputs multiply a copy
// instead of rounding that operand into the scratch (the same product); a
// null copy is rounded as in Gemm. kFp32 inputs read only a and b.
absl::Status GemmWithCopies(GemmContext& context, bool trans_a, bool trans_b, int64_t m, int64_t n,
                            int64_t k, float alpha, const float* a, const uint16_t* a16,
                            int64_t lda, const float* b, const uint16_t* b16, int64_t ldb,
                            float beta, float* c, int64_t ldc, cudaStream_t stream,
                            GemmInputs inputs);

// y[i] = the bf16 bit pattern of x[i] rounded to nearest even, i < n: the
// rounding of the bf16 GEMMs.
absl::Status RoundToBf16(const float* x, uint16_t* y, int64_t n, cudaStream_t stream);

// `batch` independent GEMMs; matrix i starts at a + i*stride_a (etc.).
absl::Status GemmBatched(GemmContext& context, bool trans_a, bool trans_b, int64_t batch, int64_t m,
                         int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                         int64_t stride_a, const float* b, int64_t ldb, int64_t stride_b,
                         float beta, float* c, int64_t ldc, int64_t stride_c, cudaStream_t stream,
                         GemmInputs inputs = GemmInputs::kFp32);

}  // namespace tessera::cuda
