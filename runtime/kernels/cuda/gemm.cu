// cuBLASLt is column-major; a row-major [r, c] matrix with leading dimension
// ld is the same memory as a column-major [c, r] one. So row-major
// C = op(A) op(B) is computed as column-major C^T = op(B)^T op(A)^T: B's
// buffer becomes cuBLASLt's "A" operand and A's buffer its "B" operand, each
// with its own transpose flag unchanged.
#include <algorithm>
#include <cstdio>
#include <limits>

#include "absl/strings/str_format.h"
#include "runtime/base/status.h"
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/gemm.h"

namespace tessera::cuda {
namespace {

// C[i] = beta * C[i] over `batch` [rows, cols] matrices (the k == 0 case,
// where cuBLASLt has no product to add to). beta == 0 writes zeros, so NaN
// garbage in C does not survive, matching BLAS.
__global__ void ScaleMatricesKernel(float* c, int64_t batch, int64_t rows, int64_t cols,
                                    int64_t ldc, int64_t stride_c, float beta) {
  const int64_t total = batch * rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t col = i % cols;
    const int64_t row = (i / cols) % rows;
    const int64_t mat = i / (cols * rows);
    float* p = c + mat * stride_c + row * ldc + col;
    *p = beta == 0.0f ? 0.0f : beta * *p;
  }
}

// Largest power of two (4..256 bytes) dividing the address of every matrix in
// the batch. cuBLASLt's heuristic otherwise assumes 256-byte alignment and may
// pick a kernel that fails on a view into the middle of a buffer.
uint32_t Alignment(const void* p, int64_t stride_elements) {
  const uint64_t bits =
      reinterpret_cast<uintptr_t>(p) | static_cast<uint64_t>(stride_elements) * sizeof(float);
  uint32_t align = 256;
  while (align > 4 && bits % align != 0) align /= 2;
  return align;
}

// Owners of the cuBLASLt descriptors, destroyed on every return path.
struct MatmulDesc {
  cublasLtMatmulDesc_t desc = nullptr;
  ~MatmulDesc() {
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};
struct Layout {
  cublasLtMatrixLayout_t desc = nullptr;
  ~Layout() {
    if (desc) cublasLtMatrixLayoutDestroy(desc);
  }
};
struct Preference {
  cublasLtMatmulPreference_t desc = nullptr;
  ~Preference() {
    if (desc) cublasLtMatmulPreferenceDestroy(desc);
  }
};

// Column-major [rows, cols] layout with leading dimension ld, `batch` of them
// `stride` elements apart.
absl::Status MakeLayout(Layout& layout, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                        int64_t stride) {
  TESSERA_CUBLAS(cublasLtMatrixLayoutCreate(&layout.desc, CUDA_R_32F, rows, cols, ld));
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    TESSERA_CUBLAS(cublasLtMatrixLayoutSetAttribute(layout.desc, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                    &count, sizeof(count)));
    TESSERA_CUBLAS(cublasLtMatrixLayoutSetAttribute(
        layout.desc, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
  return absl::OkStatus();
}

absl::Status CheckShape(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n, int64_t k,
                        int64_t lda, int64_t ldb, int64_t ldc) {
  if (batch < 0 || m < 0 || n < 0 || k < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cuda::Gemm: negative size batch=%d m=%d n=%d k=%d", batch, m, n, k));
  }
  if (batch > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrFormat("cuda::Gemm: batch %d too large", batch));
  }
  if (batch == 0 || m == 0 || n == 0) return absl::OkStatus();  // nothing is touched
  // With k == 0, A and B are not read (C = beta * C), so only ldc matters.
  const int64_t min_lda = k == 0 ? 0 : (trans_a ? m : k);
  const int64_t min_ldb = k == 0 ? 0 : (trans_b ? k : n);
  if (lda < min_lda || ldb < min_ldb || ldc < n) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::Gemm: leading dimensions lda=%d ldb=%d ldc=%d too small for trans_a=%d "
        "trans_b=%d m=%d n=%d k=%d",
        lda, ldb, ldc, trans_a, trans_b, m, n, k));
  }
  return absl::OkStatus();
}

absl::Status ScaleC(int64_t batch, int64_t m, int64_t n, float beta, float* c, int64_t ldc,
                    int64_t stride_c, cudaStream_t stream) {
  if (beta == 1.0f) return absl::OkStatus();
  constexpr int kThreads = 256;
  const int64_t total = batch * m * n;
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 4096));
  ScaleMatricesKernel<<<blocks, kThreads, 0, stream>>>(c, batch, m, n, ldc, stride_c, beta);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<GemmContext>> GemmContext::Create(size_t workspace_bytes) {
  std::unique_ptr<GemmContext> context(new GemmContext());
  TESSERA_CUBLAS(cublasLtCreate(&context->handle_));
  if (workspace_bytes > 0) {
    TESSERA_CUDA(cudaMalloc(&context->workspace_, workspace_bytes));
    context->workspace_bytes_ = workspace_bytes;
  }
  return context;
}

GemmContext::~GemmContext() {
  // Failures here mean the CUDA context is already broken; the next checked
  // call reports that, so they are only printed.
  if (workspace_ != nullptr) {
    const absl::Status status = CudaStatus(cudaFree(workspace_), "cudaFree", __FILE__, __LINE__);
    if (!status.ok()) std::fprintf(stderr, "tessera: %s\n", status.ToString().c_str());
  }
  if (handle_ != nullptr) {
    const absl::Status status =
        CublasStatus(cublasLtDestroy(handle_), "cublasLtDestroy", __FILE__, __LINE__);
    if (!status.ok()) std::fprintf(stderr, "tessera: %s\n", status.ToString().c_str());
  }
}

absl::Status GemmBatched(GemmContext& context, bool trans_a, bool trans_b, int64_t batch, int64_t m,
                         int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                         int64_t stride_a, const float* b, int64_t ldb, int64_t stride_b,
                         float beta, float* c, int64_t ldc, int64_t stride_c, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(CheckShape(trans_a, trans_b, batch, m, n, k, lda, ldb, ldc));
  if (batch == 0 || m == 0 || n == 0) return absl::OkStatus();
  if (k == 0) return ScaleC(batch, m, n, beta, c, ldc, stride_c, stream);

  MatmulDesc op;
  TESSERA_CUBLAS(cublasLtMatmulDescCreate(&op.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // cuBLASLt operand "A" is our B, operand "B" is our A (see the file comment).
  const cublasOperation_t op_first = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  TESSERA_CUBLAS(cublasLtMatmulDescSetAttribute(op.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first,
                                                sizeof(op_first)));
  TESSERA_CUBLAS(cublasLtMatmulDescSetAttribute(op.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second,
                                                sizeof(op_second)));

  // Stored (pre-op) column-major shapes: row-major B [k, n] is col-major [n, k].
  Layout first, second, out;
  TESSERA_RETURN_IF_ERROR(
      MakeLayout(first, trans_b ? k : n, trans_b ? n : k, ldb, batch, stride_b));  // B^T
  TESSERA_RETURN_IF_ERROR(
      MakeLayout(second, trans_a ? m : k, trans_a ? k : m, lda, batch, stride_a));  // A^T
  TESSERA_RETURN_IF_ERROR(MakeLayout(out, n, m, ldc, batch, stride_c));             // C^T [n, m]

  Preference preference;
  TESSERA_CUBLAS(cublasLtMatmulPreferenceCreate(&preference.desc));
  const uint64_t workspace_bytes = context.workspace_bytes();
  TESSERA_CUBLAS(cublasLtMatmulPreferenceSetAttribute(preference.desc,
                                                      CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &workspace_bytes, sizeof(workspace_bytes)));
  const uint32_t align_first = Alignment(b, batch > 1 ? stride_b : 0);
  const uint32_t align_second = Alignment(a, batch > 1 ? stride_a : 0);
  const uint32_t align_out = Alignment(c, batch > 1 ? stride_c : 0);
  TESSERA_CUBLAS(cublasLtMatmulPreferenceSetAttribute(preference.desc,
                                                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                      &align_first, sizeof(align_first)));
  TESSERA_CUBLAS(cublasLtMatmulPreferenceSetAttribute(preference.desc,
                                                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                      &align_second, sizeof(align_second)));
  TESSERA_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      preference.desc, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_out, sizeof(align_out)));
  TESSERA_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      preference.desc, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_out, sizeof(align_out)));

  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  TESSERA_CUBLAS(cublasLtMatmulAlgoGetHeuristic(context.handle(), op.desc, first.desc, second.desc,
                                                out.desc, out.desc, preference.desc, 1, &heuristic,
                                                &found));
  if (found == 0) {
    return absl::InternalError(absl::StrFormat(
        "cuda::Gemm: cuBLASLt has no fp32 algorithm for batch=%d m=%d n=%d k=%d trans_a=%d "
        "trans_b=%d",
        batch, m, n, k, trans_a, trans_b));
  }
  TESSERA_CUBLAS(cublasLtMatmul(context.handle(), op.desc, &alpha, b, first.desc, a, second.desc,
                                &beta, c, out.desc, c, out.desc, &heuristic.algo,
                                context.workspace(), context.workspace_bytes(), stream));
  return absl::OkStatus();
}

absl::Status Gemm(GemmContext& context, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                  float* c, int64_t ldc, cudaStream_t stream) {
  return GemmBatched(context, trans_a, trans_b, /*batch=*/1, m, n, k, alpha, a, lda, 0, b, ldb, 0,
                     beta, c, ldc, 0, stream);
}

}  // namespace tessera::cuda
