#include "runtime/kernels/cuda/gemm_grouped.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
#include "runtime/base/status.h"
#include "runtime/kernels/cuda/check.h"

namespace tessera::cuda {

absl::StatusOr<std::unique_ptr<GroupedGemmContext>> GroupedGemmContext::Create() {
  std::unique_ptr<GroupedGemmContext> context(new GroupedGemmContext());
  TESSERA_CUBLAS(cublasCreate(&context->handle_));
  // Strict fp32: never TF32 behind the caller's back (as GemmContext).
  TESSERA_CUBLAS(cublasSetMathMode(context->handle_, CUBLAS_PEDANTIC_MATH));
  return context;
}

GroupedGemmContext::~GroupedGemmContext() {
  if (pointers_ != nullptr) cudaFree(pointers_);
  if (handle_ != nullptr) cublasDestroy(handle_);
}

absl::StatusOr<void**> GroupedGemmContext::PointerArrays(size_t pointers) {
  if (pointers <= pointer_capacity_) return pointers_;
  if (pointers_ != nullptr) {
    TESSERA_CUDA(cudaFree(pointers_));  // waits for the calls that read it
    pointers_ = nullptr;
    pointer_capacity_ = 0;
  }
  const size_t capacity = std::max<size_t>(pointers, 256);
  TESSERA_CUDA(cudaMalloc(reinterpret_cast<void**>(&pointers_), capacity * sizeof(void*)));
  pointer_capacity_ = capacity;
  return pointers_;
}

namespace {

// Elements of a row-major rows x cols matrix with leading dimension ld.
int64_t Span(int64_t rows, int64_t cols, int64_t ld) {
  return rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols;
}

}  // namespace

absl::Status GemmGrouped(GroupedGemmContext& grouped, GemmContext& gemm, bool trans_a, bool trans_b,
                         float alpha, float beta, std::span<const GemmProblem> problems,
                         cudaStream_t stream, GemmInputs inputs) {
  const bool bf16 = inputs == GemmInputs::kBf16;
  std::vector<const GemmProblem*> together, alone;
  for (const GemmProblem& p : problems) {
    if (p.m < 0 || p.n < 0 || p.k < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GemmGrouped: negative size in problem m=%d n=%d k=%d", p.m, p.n, p.k));
    }
    if (p.m == 0 || p.n == 0) continue;
    const bool grouped_call = p.k > 0 && grouped.grouped_supported(inputs);
    (grouped_call ? together : alone).push_back(&p);
  }
  if (together.size() == 1) {  // nothing to group: the cuBLASLt plan cache serves it
    alone.push_back(together[0]);
    together.clear();
  }
  if (!together.empty()) {
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: B
    // first, the sizes swapped, the transposes kept.
    const size_t g = together.size();
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    std::vector<cublasOperation_t> first_ops(g, op_b), second_ops(g, op_a);
    std::vector<int64_t> m(g), n(g), k(g), ld_first(g), ld_second(g), ldc(g), sizes(g, 1);
    std::vector<float> alphas(g, alpha), betas(g, beta);
    std::vector<const void*> pointers(3 * g);
    // bf16: operands without a copy are rounded into one scratch, each at a
    // 256-byte boundary (cuBLAS's preferred alignment).
    std::vector<size_t> scratch_a(g, 0), scratch_b(g, 0);
    size_t scratch_bytes = 0;
    auto carve = [&](int64_t elements) {
      const size_t at = scratch_bytes;
      scratch_bytes += (static_cast<size_t>(elements) * sizeof(uint16_t) + 255) / 256 * 256;
      return at;
    };
    if (bf16) {
      for (size_t i = 0; i < g; ++i) {
        const GemmProblem& p = *together[i];
        if (p.a16 == nullptr) {
          scratch_a[i] = carve(Span(trans_a ? p.k : p.m, trans_a ? p.m : p.k, p.lda));
        }
        if (p.b16 == nullptr) {
          scratch_b[i] = carve(Span(trans_b ? p.n : p.k, trans_b ? p.k : p.n, p.ldb));
        }
      }
    }
    char* scratch = nullptr;
    if (scratch_bytes > 0) {
      TESSERA_ASSIGN_OR_RETURN(void* memory, gemm.Bf16Scratch(scratch_bytes));
      scratch = static_cast<char*>(memory);
    }
    for (size_t i = 0; i < g; ++i) {
      const GemmProblem& p = *together[i];
      m[i] = p.n;
      n[i] = p.m;
      k[i] = p.k;
      ld_first[i] = p.ldb;
      ld_second[i] = p.lda;
      ldc[i] = p.ldc;
      pointers[i] = p.b;
      pointers[g + i] = p.a;
      pointers[2 * g + i] = p.c;
      if (!bf16) continue;
      if (p.b16 != nullptr) {
        pointers[i] = p.b16;
      } else {
        auto* copy = reinterpret_cast<uint16_t*>(scratch + scratch_b[i]);
        TESSERA_RETURN_IF_ERROR(RoundToBf16(
            p.b, copy, Span(trans_b ? p.n : p.k, trans_b ? p.k : p.n, p.ldb), stream));
        pointers[i] = copy;
      }
      if (p.a16 != nullptr) {
        pointers[g + i] = p.a16;
      } else {
        auto* copy = reinterpret_cast<uint16_t*>(scratch + scratch_a[i]);
        TESSERA_RETURN_IF_ERROR(RoundToBf16(
            p.a, copy, Span(trans_a ? p.k : p.m, trans_a ? p.m : p.k, p.lda), stream));
        pointers[g + i] = copy;
      }
    }
    TESSERA_ASSIGN_OR_RETURN(void** device_pointers, grouped.PointerArrays(3 * g));
    // From pageable memory: staged before the call returns, so `pointers`
    // may go; the GEMM below reads the device copy in stream order.
    TESSERA_CUDA(cudaMemcpyAsync(device_pointers, pointers.data(), 3 * g * sizeof(void*),
                                 cudaMemcpyHostToDevice, stream));
    TESSERA_CUBLAS(cublasSetStream(grouped.handle(), stream));
    TESSERA_CUBLAS(cublasSetPointerMode(grouped.handle(), CUBLAS_POINTER_MODE_HOST));
    // bf16 inputs may use the tensor cores (their products are exact in the
    // fp32 accumulator); fp32 stays pedantic, never TF32.
    TESSERA_CUBLAS(
        cublasSetMathMode(grouped.handle(), bf16 ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH));
    const cudaDataType_t operand_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasStatus_t status = cublasGemmGroupedBatchedEx_64(
        grouped.handle(), first_ops.data(), second_ops.data(), m.data(), n.data(), k.data(),
        alphas.data(), device_pointers, operand_type, ld_first.data(), device_pointers + g,
        operand_type, ld_second.data(), betas.data(), device_pointers + 2 * g, CUDA_R_32F,
        ldc.data(), static_cast<int64_t>(g), sizes.data(), CUBLAS_COMPUTE_32F);
    if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_ARCH_MISMATCH) {
      grouped.set_grouped_unsupported(inputs);  // from now on, and these, one by one
      alone.insert(alone.end(), together.begin(), together.end());
    } else {
      TESSERA_RETURN_IF_ERROR(
          CublasStatus(status, "cublasGemmGroupedBatchedEx_64", __FILE__, __LINE__));
    }
  }
  for (const GemmProblem* p : alone) {
    TESSERA_RETURN_IF_ERROR(GemmWithCopies(gemm, trans_a, trans_b, p->m, p->n, p->k, alpha, p->a,
                                           p->a16, p->lda, p->b, p->b16, p->ldb, beta, p->c,
                                           p->ldc, stream, inputs));
  }
  return absl::OkStatus();
}

}  // namespace tessera::cuda
