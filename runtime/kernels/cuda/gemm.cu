// cuBLASLt is column-major; a row-major [r, c] matrix with leading dimension
// ld is the same memory as a column-major [c, r] one. So row-major
// C = op(A) op(B) is computed as column-major C^T = op(B)^T op(A)^T: B's
// buffer becomes cuBLASLt's "A" operand and A's buffer its "B" operand, each
// with its own transpose flag unchanged.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <unordered_map>

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
uint32_t Alignment(const void* p, int64_t stride_elements, size_t element_bytes) {
  const uint64_t bits =
      reinterpret_cast<uintptr_t>(p) | static_cast<uint64_t>(stride_elements) * element_bytes;
  uint32_t align = 256;
  while (align > element_bytes && bits % align != 0) align /= 2;
  return align;
}

// dst[i] = bf16(src[i]) (round to nearest even) for i < count.
__global__ void PackBf16Kernel(const float* src, __nv_bfloat16* dst, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = __float2bfloat16_rn(src[i]);
  }
}

// Elements from a matrix's first to its last (of `batch` matrices `stride`
// apart, `rows` rows of `cols` used elements `ld` apart): the span a bf16 copy
// must cover to keep the same leading dimension and stride. Elements in the
// gaps are converted too and never read.
int64_t Span(int64_t batch, int64_t stride, int64_t rows, int64_t cols, int64_t ld) {
  return (batch - 1) * stride + (rows - 1) * ld + cols;
}

absl::Status PackBf16(const float* src, __nv_bfloat16* dst, int64_t count, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((count + kThreads - 1) / kThreads, 4096));
  PackBf16Kernel<<<blocks, kThreads, 0, stream>>>(src, dst, count);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
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
absl::Status MakeLayout(Layout& layout, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                        int64_t batch, int64_t stride) {
  TESSERA_CUBLAS(cublasLtMatrixLayoutCreate(&layout.desc, type, rows, cols, ld));
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

// Everything that decides a cuBLASLt plan.
struct PlanKey {
  int64_t batch, m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c;
  uint32_t align_a, align_b, align_c;
  bool trans_a, trans_b;
  GemmInputs inputs;

  bool operator==(const PlanKey& o) const {
    return batch == o.batch && m == o.m && n == o.n && k == o.k && lda == o.lda && ldb == o.ldb &&
           ldc == o.ldc && stride_a == o.stride_a && stride_b == o.stride_b &&
           stride_c == o.stride_c && align_a == o.align_a && align_b == o.align_b &&
           align_c == o.align_c && trans_a == o.trans_a && trans_b == o.trans_b &&
           inputs == o.inputs;
  }
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    const int64_t words[] = {key.batch,    key.m,        key.n,        key.k,
                             key.lda,      key.ldb,      key.ldc,      key.stride_a,
                             key.stride_b, key.stride_c, key.align_a,  key.align_b,
                             key.align_c,  key.trans_a * 2 + key.trans_b,
                             static_cast<int64_t>(key.inputs)};
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the words
    for (int64_t w : words) {
      h ^= static_cast<uint64_t>(w);
      h *= 1099511628211ull;
    }
    return static_cast<size_t>(h);
  }
};

// The descriptors and the algorithm of one shape.
struct Plan {
  MatmulDesc op;
  Layout first, second, out;
  cublasLtMatmulAlgo_t algo;
};

absl::Status BuildPlan(GemmContext& context, const PlanKey& key, Plan& plan) {
  const bool bf16 = key.inputs == GemmInputs::kBf16;
  const cudaDataType_t input_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  TESSERA_CUBLAS(cublasLtMatmulDescCreate(&plan.op.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // cuBLASLt operand "A" is our B, operand "B" is our A (see the file comment).
  const cublasOperation_t op_first = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  TESSERA_CUBLAS(cublasLtMatmulDescSetAttribute(plan.op.desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                &op_first, sizeof(op_first)));
  TESSERA_CUBLAS(cublasLtMatmulDescSetAttribute(plan.op.desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                &op_second, sizeof(op_second)));

  // Stored (pre-op) column-major shapes: row-major B [k, n] is col-major [n, k].
  const int64_t m = key.m, n = key.n, k = key.k;
  TESSERA_RETURN_IF_ERROR(MakeLayout(plan.first, input_type, key.trans_b ? k : n,
                                     key.trans_b ? n : k, key.ldb, key.batch, key.stride_b));
  TESSERA_RETURN_IF_ERROR(MakeLayout(plan.second, input_type, key.trans_a ? m : k,
                                     key.trans_a ? k : m, key.lda, key.batch, key.stride_a));
  TESSERA_RETURN_IF_ERROR(
      MakeLayout(plan.out, CUDA_R_32F, n, m, key.ldc, key.batch, key.stride_c));  // C^T [n, m]

  Preference preference;
  TESSERA_CUBLAS(cublasLtMatmulPreferenceCreate(&preference.desc));
  const uint64_t workspace_bytes = context.workspace_bytes();
  TESSERA_CUBLAS(cublasLtMatmulPreferenceSetAttribute(preference.desc,
                                                      CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &workspace_bytes, sizeof(workspace_bytes)));
  TESSERA_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      preference.desc, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align_b, sizeof(key.align_b)));
  TESSERA_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      preference.desc, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align_a, sizeof(key.align_a)));
  TESSERA_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      preference.desc, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align_c, sizeof(key.align_c)));
  TESSERA_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      preference.desc, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align_c, sizeof(key.align_c)));

  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  TESSERA_CUBLAS(cublasLtMatmulAlgoGetHeuristic(context.handle(), plan.op.desc, plan.first.desc,
                                                plan.second.desc, plan.out.desc, plan.out.desc,
                                                preference.desc, 1, &heuristic, &found));
  if (found == 0) {
    return absl::InternalError(absl::StrFormat(
        "cuda::Gemm: cuBLASLt has no %s algorithm for batch=%d m=%d n=%d k=%d trans_a=%d "
        "trans_b=%d",
        bf16 ? "bf16" : "fp32", key.batch, m, n, k, key.trans_a, key.trans_b));
  }
  plan.algo = heuristic.algo;
  return absl::OkStatus();
}

}  // namespace

struct GemmPlanCache {
  // A run has a few dozen shapes; a program sweeping sizes (a benchmark) is
  // kept from growing without bound by starting over past this many.
  static constexpr size_t kMaxPlans = 4096;
  std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> plans;
};

GemmContext::GemmContext() : plans_(std::make_unique<GemmPlanCache>()) {}

absl::StatusOr<std::unique_ptr<GemmContext>> GemmContext::Create(size_t workspace_bytes) {
  std::unique_ptr<GemmContext> context(new GemmContext());
  TESSERA_CUBLAS(cublasLtCreate(&context->handle_));
  if (workspace_bytes > 0) {
    TESSERA_CUDA(cudaMalloc(&context->workspace_, workspace_bytes));
    context->workspace_bytes_ = workspace_bytes;
  }
  return context;
}

absl::StatusOr<void*> GemmContext::Bf16Scratch(size_t bytes) {
  if (bytes <= scratch_bytes_) return scratch_;
  if (scratch_ != nullptr) {
    TESSERA_CUDA(cudaFree(scratch_));
    scratch_ = nullptr;
    scratch_bytes_ = 0;
  }
  const cudaError_t error = cudaMalloc(&scratch_, bytes);
  if (error != cudaSuccess) {
    scratch_ = nullptr;
    size_t free_bytes = 0, total_bytes = 0;
    cudaGetLastError();  // clear the allocation failure before asking
    cudaMemGetInfo(&free_bytes, &total_bytes);
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cuda::Gemm: cannot allocate %d bytes of bf16 scratch (%s; %d of %d bytes free)", bytes,
        cudaGetErrorString(error), free_bytes, total_bytes));
  }
  scratch_bytes_ = bytes;
  return scratch_;
}

GemmContext::~GemmContext() {
  plans_.reset();  // descriptors before the handle
  // Failures here mean the CUDA context is already broken; the next checked
  // call reports that, so they are only printed.
  for (void* buffer : {workspace_, scratch_}) {
    if (buffer == nullptr) continue;
    const absl::Status status = CudaStatus(cudaFree(buffer), "cudaFree", __FILE__, __LINE__);
    if (!status.ok()) std::fprintf(stderr, "tessera: %s\n", status.ToString().c_str());
  }
  if (handle_ != nullptr) {
    const absl::Status status =
        CublasStatus(cublasLtDestroy(handle_), "cublasLtDestroy", __FILE__, __LINE__);
    if (!status.ok()) std::fprintf(stderr, "tessera: %s\n", status.ToString().c_str());
  }
}

namespace {
// GemmBatched with optional bf16 copies of A and B (used by kBf16 inputs).
absl::Status GemmBatchedWithCopies(GemmContext& context, bool trans_a, bool trans_b, int64_t batch,
                                   int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                                   const uint16_t* a_copy, int64_t lda, int64_t stride_a,
                                   const float* b, const uint16_t* b_copy, int64_t ldb,
                                   int64_t stride_b, float beta, float* c, int64_t ldc,
                                   int64_t stride_c, cudaStream_t stream, GemmInputs inputs) {
  TESSERA_RETURN_IF_ERROR(CheckShape(trans_a, trans_b, batch, m, n, k, lda, ldb, ldc));
  if (batch == 0 || m == 0 || n == 0) return absl::OkStatus();
  if (k == 0) return ScaleC(batch, m, n, beta, c, ldc, stride_c, stream);
  if (batch == 1) stride_a = stride_b = stride_c = 0;

  const void* operand_a = a;
  const void* operand_b = b;
  size_t element_bytes = sizeof(float);
  if (inputs == GemmInputs::kBf16) {
    // Round A and B into the scratch, each copy keeping its leading dimension
    // and stride; B's copy starts at the next 256-byte boundary.
    const int64_t span_a = Span(batch, stride_a, trans_a ? k : m, trans_a ? m : k, lda);
    const int64_t span_b = Span(batch, stride_b, trans_b ? n : k, trans_b ? k : n, ldb);
    const size_t bytes_a = (static_cast<size_t>(span_a) * sizeof(__nv_bfloat16) + 255) / 256 * 256;
    const size_t bytes_b = static_cast<size_t>(span_b) * sizeof(__nv_bfloat16);
    // An operand that comes with its copy takes no scratch and no rounding.
    const size_t scratch_a = a_copy != nullptr ? 0 : bytes_a;
    const size_t scratch_b = b_copy != nullptr ? 0 : bytes_b;
    if (scratch_a + scratch_b > 0) {
      TESSERA_ASSIGN_OR_RETURN(void* scratch, context.Bf16Scratch(scratch_a + scratch_b));
      if (a_copy == nullptr) {
        auto* a16 = static_cast<__nv_bfloat16*>(scratch);
        TESSERA_RETURN_IF_ERROR(PackBf16(a, a16, span_a, stream));
        operand_a = a16;
      }
      if (b_copy == nullptr) {
        auto* b16 = reinterpret_cast<__nv_bfloat16*>(static_cast<char*>(scratch) + scratch_a);
        TESSERA_RETURN_IF_ERROR(PackBf16(b, b16, span_b, stream));
        operand_b = b16;
      }
    }
    if (a_copy != nullptr) operand_a = a_copy;
    if (b_copy != nullptr) operand_b = b_copy;
    element_bytes = sizeof(__nv_bfloat16);
  }

  const PlanKey key{batch,
                    m,
                    n,
                    k,
                    lda,
                    ldb,
                    ldc,
                    stride_a,
                    stride_b,
                    stride_c,
                    Alignment(operand_a, stride_a, element_bytes),
                    Alignment(operand_b, stride_b, element_bytes),
                    Alignment(c, stride_c, sizeof(float)),
                    trans_a,
                    trans_b,
                    inputs};
  auto& plans = context.plans().plans;
  auto found = plans.find(key);
  if (found == plans.end()) {
    if (plans.size() >= GemmPlanCache::kMaxPlans) plans.clear();
    auto plan = std::make_unique<Plan>();
    TESSERA_RETURN_IF_ERROR(BuildPlan(context, key, *plan));
    found = plans.emplace(key, std::move(plan)).first;
  }
  const Plan& plan = *found->second;
  TESSERA_CUBLAS(cublasLtMatmul(context.handle(), plan.op.desc, &alpha, operand_b, plan.first.desc,
                                operand_a, plan.second.desc, &beta, c, plan.out.desc, c,
                                plan.out.desc, &plan.algo, context.workspace(),
                                context.workspace_bytes(), stream));
  return absl::OkStatus();
}

}  // namespace

absl::Status GemmBatched(GemmContext& context, bool trans_a, bool trans_b, int64_t batch, int64_t m,
                         int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                         int64_t stride_a, const float* b, int64_t ldb, int64_t stride_b,
                         float beta, float* c, int64_t ldc, int64_t stride_c, cudaStream_t stream,
                         GemmInputs inputs) {
  return GemmBatchedWithCopies(context, trans_a, trans_b, batch, m, n, k, alpha, a, nullptr, lda,
                               stride_a, b, nullptr, ldb, stride_b, beta, c, ldc, stride_c, stream,
                               inputs);
}

absl::Status GemmWithCopies(GemmContext& context, bool trans_a, bool trans_b, int64_t m, int64_t n,
                            int64_t k, float alpha, const float* a, const uint16_t* a16,
                            int64_t lda, const float* b, const uint16_t* b16, int64_t ldb,
                            float beta, float* c, int64_t ldc, cudaStream_t stream,
                            GemmInputs inputs) {
  return GemmBatchedWithCopies(context, trans_a, trans_b, /*batch=*/1, m, n, k, alpha, a, a16, lda,
                               0, b, b16, ldb, 0, beta, c, ldc, 0, stream, inputs);
}

absl::Status RoundToBf16(const float* x, uint16_t* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return absl::OkStatus();
  return PackBf16(x, reinterpret_cast<__nv_bfloat16*>(y), n, stream);
}

absl::Status Gemm(GemmContext& context, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                  float* c, int64_t ldc, cudaStream_t stream, GemmInputs inputs) {
  return GemmBatched(context, trans_a, trans_b, /*batch=*/1, m, n, k, alpha, a, lda, 0, b, ldb, 0,
                     beta, c, ldc, 0, stream, inputs);
}

}  // namespace tessera::cuda
