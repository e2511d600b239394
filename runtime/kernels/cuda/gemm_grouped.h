// Grouped GEMM on the GPU: `count` independent row-major GEMMs with sizes
// and operands of their own, the transposes, alpha and beta shared (the
// experts of an MoE layer), with tessera::cuda::Gemm's contract for each.
//
// One cublasGemmGroupedBatchedEx_64 call (cuBLAS >= 12.5) for every
// problem with m, n, k > 0 — one launch schedules them all:
//   fp32: A, B, C CUDA_R_32F, in strict fp32 (CUBLAS_COMPUTE_32F, pedantic
//         math: no TF32, as Gemm);
//   bf16: A and B CUDA_R_16BF (the problems' bf16 copies, RoundToBf16; an
//         operand without one is rounded into the GEMM context's scratch
//         first, as Gemm does), C CUDA_R_32F, CUBLAS_COMPUTE_32F (products
//         of the bf16 values accumulated in fp32: Gemm's bf16 arithmetic).
// The pointer arrays it reads are uploaded to device scratch on the stream.
// Problems with k == 0 (C = beta C) and a cuBLAS without the grouped call
// for this GPU or this type combination (CUBLAS_STATUS_NOT_SUPPORTED /
// ARCH_MISMATCH, remembered per precision) go one by one through Gemm. m ==
// 0 or n == 0 does nothing.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "runtime/kernels/cuda/gemm.h"
#include "runtime/kernels/kernel_args.h"

namespace tessera::cuda {

// A cuBLAS handle and the device arrays of operand pointers, on the device
// current at Create. Calls sharing one must be ordered on one stream.
class GroupedGemmContext {
 public:
  static absl::StatusOr<std::unique_ptr<GroupedGemmContext>> Create();
  ~GroupedGemmContext();
  GroupedGemmContext(const GroupedGemmContext&) = delete;
  GroupedGemmContext& operator=(const GroupedGemmContext&) = delete;

  cublasHandle_t handle() const { return handle_; }
  // Device room for `pointers` pointers (grow-only; growing waits for the device).
  absl::StatusOr<void**> PointerArrays(size_t pointers);
  // False once the grouped call reported it cannot run here (fp32 and
  // bf16 inputs are told apart: the type combination may be what fails).
  bool grouped_supported(GemmInputs inputs) const {
    return inputs == GemmInputs::kFp32 ? grouped_supported_ : bf16_grouped_supported_;
  }
  void set_grouped_unsupported(GemmInputs inputs) {
    (inputs == GemmInputs::kFp32 ? grouped_supported_ : bf16_grouped_supported_) = false;
  }

 private:
  GroupedGemmContext() = default;
  cublasHandle_t handle_ = nullptr;
  void** pointers_ = nullptr;
  size_t pointer_capacity_ = 0;
  bool grouped_supported_ = true;
  bool bf16_grouped_supported_ = true;
};

absl::Status GemmGrouped(GroupedGemmContext& grouped, GemmContext& gemm, bool trans_a, bool trans_b,
                         float alpha, float beta, std::span<const GemmProblem> problems,
                         cudaStream_t stream, GemmInputs inputs = GemmInputs::kFp32);

}  // namespace tessera::cuda
