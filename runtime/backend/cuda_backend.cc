#include "runtime/backend/cuda_backend.h"

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "runtime/base/human_units.h"
#include "runtime/base/status.h"
#include "runtime/kernels/cuda/activation.h"
#include "runtime/kernels/cuda/attention.h"
#include "runtime/kernels/cuda/attention_bf16.h"
#include "runtime/kernels/cuda/causal_conv1d.h"
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/device.h"
#include "runtime/kernels/cuda/flat.h"
#include "runtime/kernels/cuda/gemm.h"
#include "runtime/kernels/cuda/gemm_grouped.h"
#include "runtime/kernels/cuda/hstu.h"
#include "runtime/kernels/cuda/layer_norm.h"
#include "runtime/kernels/cuda/loss.h"
#include "runtime/kernels/cuda/modulate.h"
#include "runtime/kernels/cuda/routing.h"
#include "runtime/kernels/cuda/softmax.h"
#include "runtime/kernels/cuda/ssd.h"
#include "runtime/kernels/cuda/ssm_pointwise.h"

namespace tessera {
namespace {

class CudaEvent final : public Event {
 public:
  explicit CudaEvent(cudaEvent_t event) : event_(event) {}
  ~CudaEvent() override { cudaEventDestroy(event_); }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_;
};

cudaEvent_t Handle(const Event& event) { return static_cast<const CudaEvent&>(event).get(); }

#define CUDA_CALL(expr) ::tessera::cuda::CudaStatus((expr), #expr, __FILE__, __LINE__)

// Pinned host memory staging CopyToDevice's sources (allocated by the first
// copy): copies up to a quarter of it (16 MiB) go through it without a host
// wait; a step's inputs are far below that.
constexpr size_t kStagingRingBytes = size_t{64} << 20;

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(int device) {
  TESSERA_RETURN_IF_ERROR(cuda::SetDevice(device));
  std::unique_ptr<CudaBackend> backend(new CudaBackend());
  backend->device_ = device;
  TESSERA_CUDA(cudaStreamCreateWithFlags(&backend->stream_, cudaStreamNonBlocking));
  TESSERA_CUDA(cudaDeviceGetDefaultMemPool(&backend->pool_, device));
  // Keep what is freed: later allocations reuse it without asking the driver.
  uint64_t keep_everything = UINT64_MAX;
  TESSERA_CUDA(
      cudaMemPoolSetAttribute(backend->pool_, cudaMemPoolAttrReleaseThreshold, &keep_everything));
  TESSERA_ASSIGN_OR_RETURN(backend->gemm_, cuda::GemmContext::Create());
  backend->staging_ = std::make_unique<StagingRing>(*backend, kStagingRingBytes);
  const char* each = std::getenv("TESSERA_CUDA_SYNC_EACH_OP");
  backend->sync_each_op_ = each != nullptr && std::string(each) == "1";
  return backend;
}

CudaBackend::~CudaBackend() {
  staging_.reset();  // waits for its queued copies; its events die before the stream
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (scratch_ != nullptr) cudaFree(scratch_);
  grouped_.reset();
  gemm_.reset();
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

size_t CudaBackend::pool_reserved_bytes() const {
  uint64_t reserved = 0;
  cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &reserved);
  return reserved;
}

void CudaBackend::Check(const char* op, absl::Status status) {
  last_op_ = op;
  ++ops_since_sync_;
  if (status.ok() && sync_each_op_) status = CUDA_CALL(cudaStreamSynchronize(stream_));
  if (!status.ok() && error_.ok()) {
    error_ = absl::Status(status.code(), absl::StrFormat("CUDA op %s on device %d: %s", op, device_,
                                                         status.message()));
  }
}

void* CudaBackend::Scratch(const char* op, size_t bytes) {
  if (bytes <= scratch_bytes_) return scratch_;
  if (scratch_ != nullptr) Check(op, CUDA_CALL(cudaFreeAsync(scratch_, stream_)));
  scratch_ = nullptr;
  scratch_bytes_ = 0;
  void* fresh = nullptr;
  const absl::Status status = Allocate(bytes, &fresh);
  Check(op, status);
  if (!status.ok()) return nullptr;
  scratch_ = fresh;
  scratch_bytes_ = bytes;
  return scratch_;
}

void CudaBackend::NoteAsynchronousError(cudaError_t error) {
  if (error == cudaSuccess || !error_.ok()) return;
  error_ = absl::InternalError(absl::StrFormat(
      "CUDA device %d: asynchronous error %s (%s) in one of the %d ops queued since the last "
      "synchronize, the last of them %s (TESSERA_CUDA_SYNC_EACH_OP=1 names the failing op)",
      device_, cudaGetErrorString(error), cudaGetErrorName(error), ops_since_sync_, last_op_));
}

// ---- Memory ------------------------------------------------------------------

absl::Status CudaBackend::Allocate(size_t bytes, void** out) {
  const cudaError_t error = cudaMallocAsync(out, bytes == 0 ? 1 : bytes, stream_);
  if (error == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // an allocation failure is not sticky; clear it
  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  const std::string what = absl::StrFormat(
      "CUDA device %d: cannot allocate %s (%d bytes): %s; the device has %s free of %s, this "
      "process's pool holds %s",
      device_, HumanBytes(bytes), bytes, cudaGetErrorString(error), HumanBytes(free_bytes),
      HumanBytes(total_bytes), HumanBytes(pool_reserved_bytes()));
  if (error == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(what);
  return absl::InternalError(what);
}

void CudaBackend::Free(void* ptr) {
  if (ptr != nullptr) Check("Free", CUDA_CALL(cudaFreeAsync(ptr, stream_)));
}

void CudaBackend::Memset(void* dst, int value, size_t bytes) {
  if (bytes > 0) Check("Memset", CUDA_CALL(cudaMemsetAsync(dst, value, bytes, stream_)));
}

void CudaBackend::CopyToDevice(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  // The usual case, a step's small inputs: copied into the pinned staging
  // ring and queued; the host goes on without waiting for the stream.
  if (staging_ != nullptr && staging_->Upload(dst, host_src, bytes)) return;
  // Large copies (loads, set-up). A pageable source is staged by the driver
  // before the call returns; a pinned one is not, so wait to keep "reusable
  // on return" true for both.
  Check("CopyToDevice",
        CUDA_CALL(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_)));
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, host_src) == cudaSuccess &&
      attributes.type == cudaMemoryTypeHost) {
    Check("CopyToDevice", CUDA_CALL(cudaStreamSynchronize(stream_)));
  }
  cudaGetLastError();
}

void CudaBackend::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  Check("CopyToHost",
        CUDA_CALL(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_)));
  Check("CopyToHost", CUDA_CALL(cudaStreamSynchronize(stream_)));
}

absl::Status CudaBackend::AllocatePinnedHost(size_t bytes, void** out) {
  const cudaError_t error = cudaHostAlloc(out, bytes == 0 ? 1 : bytes, cudaHostAllocDefault);
  if (error == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // not sticky
  const std::string what = absl::StrFormat(
      "CUDA device %d: cannot allocate %s (%d bytes) of pinned host memory (cudaHostAlloc): %s",
      device_, HumanBytes(bytes), bytes, cudaGetErrorString(error));
  if (error == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(what);
  return absl::InternalError(what);
}

void CudaBackend::FreePinnedHost(void* ptr) {
  if (ptr != nullptr) Check("FreePinnedHost", CUDA_CALL(cudaFreeHost(ptr)));
}

void CudaBackend::CopyToDeviceAsync(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  Check("CopyToDeviceAsync",
        CUDA_CALL(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_)));
}

void CudaBackend::CopyToHostAsync(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  Check("CopyToHostAsync",
        CUDA_CALL(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_)));
}

void CudaBackend::Copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  Check("Copy", CUDA_CALL(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_)));
}

void CudaBackend::Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                         size_t row_bytes, size_t rows) {
  if (rows == 0 || row_bytes == 0) return;
  Check("Copy2D", CUDA_CALL(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, rows,
                                              cudaMemcpyDeviceToDevice, stream_)));
}

// ---- Ordering ----------------------------------------------------------------

std::unique_ptr<Event> CudaBackend::CreateEvent() {
  cudaEvent_t event = nullptr;
  Check("CreateEvent", CUDA_CALL(cudaEventCreateWithFlags(&event, cudaEventDisableTiming)));
  return std::make_unique<CudaEvent>(event);
}

void CudaBackend::Record(Event& event) {
  Check("Record", CUDA_CALL(cudaEventRecord(Handle(event), stream_)));
}

void CudaBackend::StreamWait(const Event& event) {
  Check("StreamWait", CUDA_CALL(cudaStreamWaitEvent(stream_, Handle(event), 0)));
}

void CudaBackend::HostWait(const Event& event) {
  Check("HostWait", CUDA_CALL(cudaEventSynchronize(Handle(event))));
}

absl::Status CudaBackend::Synchronize() {
  NoteAsynchronousError(cudaStreamSynchronize(stream_));
  ops_since_sync_ = 0;
  return error_;
}

absl::Status CudaBackend::PollErrors() {
  // A launch error still pending, then the stream's state: cudaErrorNotReady
  // only says work is queued (the host is at most a step ahead of it).
  cudaError_t error = cudaPeekAtLastError();
  if (error == cudaSuccess) error = cudaStreamQuery(stream_);
  if (error != cudaErrorNotReady) NoteAsynchronousError(error);
  return error_;
}

// ---- GEMM --------------------------------------------------------------------

absl::Status CudaBackend::CheckPrecision(MathPrecision precision, std::string* note) const {
  note->clear();
  if (precision == MathPrecision::kFp32) return absl::OkStatus();
  int major = 0;
  TESSERA_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_));
  if (major < 8) {
    return absl::UnimplementedError(absl::StrFormat(
        "CUDA device %d has compute capability %d.x: bf16 GEMMs need 8.0 or newer", device_,
        major));
  }
  return absl::OkStatus();
}

namespace {
cuda::GemmInputs InputsFor(MathPrecision precision) {
  return precision == MathPrecision::kBf16 ? cuda::GemmInputs::kBf16 : cuda::GemmInputs::kFp32;
}
}  // namespace

void CudaBackend::Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                       const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                       float* c, int64_t ldc) {
  Check("Gemm", cuda::Gemm(*gemm_, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                           stream_, InputsFor(gemm_precision())));
}

void CudaBackend::GemmBatched(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n,
                              int64_t k, float alpha, const float* a, int64_t lda,
                              int64_t stride_a, const float* b, int64_t ldb, int64_t stride_b,
                              float beta, float* c, int64_t ldc, int64_t stride_c) {
  Check("GemmBatched", cuda::GemmBatched(*gemm_, trans_a, trans_b, batch, m, n, k, alpha, a, lda,
                                         stride_a, b, ldb, stride_b, beta, c, ldc, stride_c,
                                         stream_, InputsFor(gemm_precision())));
}

void CudaBackend::GemmGrouped(bool trans_a, bool trans_b, float alpha, float beta,
                              std::span<const GemmProblem> problems) {
  if (grouped_ == nullptr) {
    absl::StatusOr<std::unique_ptr<cuda::GroupedGemmContext>> created =
        cuda::GroupedGemmContext::Create();
    if (!created.ok()) {
      Check("GemmGrouped", created.status());
      return;
    }
    grouped_ = *std::move(created);
  }
  // A bf16 run multiplies the problems' bf16 copies in one grouped call.
  Check("GemmGrouped", cuda::GemmGrouped(*grouped_, *gemm_, trans_a, trans_b, alpha, beta,
                                         problems, stream_, InputsFor(gemm_precision())));
}

void CudaBackend::GemmOperands(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                               float alpha, GemmOperand a, int64_t lda, GemmOperand b, int64_t ldb,
                               float beta, float* c, int64_t ldc) {
  Check("GemmOperands",
        cuda::GemmWithCopies(*gemm_, trans_a, trans_b, m, n, k, alpha, a.values, a.bf16, lda,
                             b.values, b.bf16, ldb, beta, c, ldc, stream_,
                             InputsFor(gemm_precision())));
}

void CudaBackend::RoundToBf16(const float* x, uint16_t* y, int64_t n) {
  Check("RoundToBf16", cuda::RoundToBf16(x, y, n, stream_));
}

// ---- Norms ---------------------------------------------------------------------

void CudaBackend::LayerNormForward(const float* x, const float* gamma, const float* beta, float* y,
                                   float* mean, float* rstd, int64_t rows, int64_t dim, float eps) {
  Check("LayerNormForward",
        cuda::LayerNormForward(x, gamma, beta, y, mean, rstd, rows, dim, eps, stream_));
}

void CudaBackend::LayerNormBackward(const float* dy, const float* x, const float* gamma,
                                    const float* mean, const float* rstd, float* dx,
                                    float* dgamma, float* dbeta, int64_t rows, int64_t dim) {
  Check("LayerNormBackward", cuda::LayerNormBackward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta,
                                                     rows, dim, stream_));
}

void CudaBackend::RmsNormForward(const float* x, const float* gamma, float* y, float* rstd,
                                 int64_t rows, int64_t dim, float eps) {
  Check("RmsNormForward", cuda::RmsNormForward(x, gamma, y, rstd, rows, dim, eps, stream_));
}

void CudaBackend::RmsNormBackward(const float* dy, const float* x, const float* gamma,
                                  const float* rstd, float* dx, float* dgamma, int64_t rows,
                                  int64_t dim) {
  Check("RmsNormBackward",
        cuda::RmsNormBackward(dy, x, gamma, rstd, dx, dgamma, rows, dim, stream_));
}

// ---- Elementwise ---------------------------------------------------------------

void CudaBackend::SiluForward(const float* x, float* y, int64_t n) {
  Check("SiluForward", cuda::SiluForward(x, y, n, stream_));
}

void CudaBackend::SiluBackward(const float* dy, const float* x, float* dx, int64_t n) {
  Check("SiluBackward", cuda::SiluBackward(dy, x, dx, n, stream_));
}

void CudaBackend::GeluForward(const float* x, float* y, int64_t n) {
  Check("GeluForward", cuda::GeluForward(x, y, n, stream_));
}

void CudaBackend::GeluBackward(const float* dy, const float* x, float* dx, int64_t n) {
  Check("GeluBackward", cuda::GeluBackward(dy, x, dx, n, stream_));
}

void CudaBackend::SwigluForward(const float* x, float* y, int64_t rows, int64_t hidden) {
  Check("SwigluForward", cuda::SwigluForward(x, y, rows, hidden, stream_));
}

void CudaBackend::SwigluBackward(const float* dy, const float* x, float* dx, int64_t rows,
                                 int64_t hidden) {
  Check("SwigluBackward", cuda::SwigluBackward(dy, x, dx, rows, hidden, stream_));
}

void CudaBackend::ReluSquaredForward(const float* x, float* y, int64_t n) {
  Check("ReluSquaredForward", cuda::ReluSquaredForward(x, y, n, stream_));
}

void CudaBackend::ReluSquaredBackward(const float* dy, const float* x, float* dx, int64_t n) {
  Check("ReluSquaredBackward", cuda::ReluSquaredBackward(dy, x, dx, n, stream_));
}

void CudaBackend::AddInPlace(float* y, const float* x, int64_t n) {
  Check("AddInPlace", cuda::AddInPlace(y, x, n, stream_));
}

void CudaBackend::AddBiasRows(float* y, const float* bias, int64_t rows, int64_t dim) {
  Check("AddBiasRows", cuda::AddBiasRows(y, bias, rows, dim, stream_));
}

void CudaBackend::SumRowsAccumulate(const float* dy, float* dbias, int64_t rows, int64_t dim) {
  Check("SumRowsAccumulate", cuda::SumRowsAccumulate(dy, dbias, rows, dim, stream_));
}

void CudaBackend::Scale(float* x, int64_t n, float scale) {
  Check("Scale", cuda::Scale(x, n, scale, stream_));
}

void CudaBackend::AddScaledRows(float* y, const float* scale, const float* x, int64_t rows,
                                int64_t dim) {
  Check("AddScaledRows", cuda::AddScaledRows(y, scale, x, rows, dim, stream_));
}

void CudaBackend::SumSquares(const float* x, int64_t n, double* sum) {
  void* partials = Scratch("SumSquares", sizeof(double) * cuda::kSumSquaresBlocks);
  if (partials == nullptr) return;
  Check("SumSquares", cuda::SumSquares(x, n, static_cast<double*>(partials), sum, stream_));
}

void CudaBackend::AccumulateScalars(const double* x, int64_t n, double weight, double* acc) {
  Check("AccumulateScalars", cuda::AccumulateScalars(x, n, weight, acc, stream_));
}

void CudaBackend::StepGuard(const double* norm_squared, double max_norm, int64_t step,
                            double* diverged_step, float* scale) {
  Check("StepGuard", cuda::StepGuard(norm_squared, max_norm, step, diverged_step, scale, stream_));
}

void CudaBackend::GatherElements(const float* in, const int32_t* index, float* out, int64_t n) {
  Check("GatherElements", cuda::GatherElements(in, index, out, n, stream_));
}

void CudaBackend::ScatterElements(const float* in, const int32_t* index, float* out, int64_t n) {
  Check("ScatterElements", cuda::ScatterElements(in, index, out, n, stream_));
}

// ---- Softmax and attention -----------------------------------------------------

void CudaBackend::SoftmaxForward(const float* x, float* y, int64_t rows, int64_t dim) {
  Check("SoftmaxForward", cuda::SoftmaxForward(x, y, rows, dim, stream_));
}

void CudaBackend::SoftmaxBackward(const float* dy, const float* y, float* dx, int64_t rows,
                                  int64_t dim) {
  Check("SoftmaxBackward", cuda::SoftmaxBackward(dy, y, dx, rows, dim, stream_));
}

// A bf16 run's attention runs on the tensor cores (attention_bf16.h) when
// the shape and the operands' alignment allow (head_dim 16..128, multiples
// of 4; 16-byte aligned views, which the arena's and the fused projections'
// offsets are); every other call, and every fp32 run, takes the fp32 kernel.
// Forward and backward decide alike; were only the backward's gradient
// buffers misaligned, its fp32 kernel would recompute P from the bf16
// forward's lse (rows summing to 1 within the scores' bf16 rounding).
void CudaBackend::AttentionForward(const AttentionShape& shape, const float* q, const float* k,
                                   const float* v, float* out, float* lse) {
  if (gemm_precision() == MathPrecision::kBf16 &&
      cuda::Bf16AttentionSupports(shape, {q, k, v, out})) {
    Check("AttentionForward", cuda::AttentionForwardBf16(shape, q, k, v, out, lse, stream_));
    return;
  }
  Check("AttentionForward", cuda::AttentionForward(shape, q, k, v, out, lse, stream_));
}

void CudaBackend::AttentionBackward(const AttentionShape& shape, const float* q, const float* k,
                                    const float* v, const float* out, const float* dout,
                                    const float* lse, float* dq, float* dk, float* dv) {
  const bool bf16 = gemm_precision() == MathPrecision::kBf16 &&
                    cuda::Bf16AttentionSupports(shape, {q, k, v, out, dout, dq, dk, dv});
  const size_t bytes =
      sizeof(float) * static_cast<size_t>(bf16 ? cuda::AttentionBackwardBf16Scratch(shape)
                                                : cuda::AttentionBackwardScratch(shape));
  void* scratch = Scratch("AttentionBackward", bytes);
  if (scratch == nullptr) return;
  if (bf16) {
    Check("AttentionBackward",
          cuda::AttentionBackwardBf16(shape, q, k, v, out, dout, lse, dq, dk, dv,
                                      static_cast<float*>(scratch), stream_));
    return;
  }
  Check("AttentionBackward", cuda::AttentionBackward(shape, q, k, v, out, dout, lse, dq, dk, dv,
                                                     static_cast<float*>(scratch), stream_));
}

// ---- Embedding and losses ------------------------------------------------------

void CudaBackend::EmbeddingForward(const int32_t* ids, const float* table, float* out, int64_t n,
                                   int64_t dim) {
  Check("EmbeddingForward", cuda::EmbeddingForward(ids, table, out, n, dim, stream_));
}

void CudaBackend::EmbeddingBackward(const int32_t* ids, const float* dout, float* dtable,
                                    int64_t n, int64_t dim) {
  Check("EmbeddingBackward", cuda::EmbeddingBackward(ids, dout, dtable, n, dim, stream_));
}

void CudaBackend::GatherDotForward(const float* q, const float* rows, const int32_t* slots,
                                   int64_t tokens, int64_t per_token, int64_t dim, float alpha,
                                   float beta, float* out) {
  Check("GatherDotForward", cuda::GatherDotForward(q, rows, slots, tokens, per_token, dim, alpha,
                                                   beta, out, stream_));
}

void CudaBackend::GatherDotBackward(const float* q, const float* rows, const int32_t* slots,
                                    int64_t tokens, int64_t per_token, int64_t dim, float alpha,
                                    const float* dout, float* dq, float* drows) {
  Check("GatherDotBackward", cuda::GatherDotBackward(q, rows, slots, tokens, per_token, dim,
                                                     alpha, dout, dq, drows, stream_));
}

void CudaBackend::MseForward(const float* pred, const float* target, int64_t n, double* loss) {
  void* partials = Scratch("MseForward", sizeof(double) * cuda::kLossPartials);
  if (partials == nullptr) return;
  Check("MseForward",
        cuda::MseForward(pred, target, n, static_cast<double*>(partials), loss, stream_));
}

void CudaBackend::MseBackward(const float* pred, const float* target, float* dpred, int64_t n,
                              float scale) {
  Check("MseBackward", cuda::MseBackward(pred, target, dpred, n, scale, stream_));
}

void CudaBackend::CrossEntropyForward(const float* logits, const int32_t* targets, float* probs,
                                      int64_t rows, int64_t classes, double* loss) {
  void* row_loss = Scratch("CrossEntropyForward", sizeof(double) * static_cast<size_t>(rows + 1));
  if (row_loss == nullptr) return;
  Check("CrossEntropyForward",
        cuda::CrossEntropyForward(logits, targets, probs, rows, classes,
                                  static_cast<double*>(row_loss), loss, stream_));
}

void CudaBackend::CrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits,
                                       int64_t rows, int64_t classes, float scale) {
  Check("CrossEntropyBackward",
        cuda::CrossEntropyBackward(probs, targets, dlogits, rows, classes, scale, stream_));
}

void CudaBackend::VocabCrossEntropyStats(const float* logits, const int32_t* targets,
                                         int64_t rows, int64_t columns, int64_t column_offset,
                                         double* stats) {
  Check("VocabCrossEntropyStats", cuda::VocabCrossEntropyStats(logits, targets, rows, columns,
                                                               column_offset, stats, stream_));
}

void CudaBackend::VocabCrossEntropyCombine(const float* logits, const double* all_stats,
                                           int64_t ranks, const int32_t* targets, float* probs,
                                           int64_t rows, int64_t columns, double* totals) {
  void* row_terms =
      Scratch("VocabCrossEntropyCombine", sizeof(double) * static_cast<size_t>(2 * rows + 1));
  if (row_terms == nullptr) return;
  Check("VocabCrossEntropyCombine",
        cuda::VocabCrossEntropyCombine(logits, all_stats, ranks, targets, probs, rows, columns,
                                       static_cast<double*>(row_terms), totals, stream_));
}

void CudaBackend::VocabCrossEntropyBackward(const float* probs, const int32_t* targets,
                                            float* dlogits, int64_t rows, int64_t columns,
                                            int64_t column_offset, float scale) {
  Check("VocabCrossEntropyBackward",
        cuda::VocabCrossEntropyBackward(probs, targets, dlogits, rows, columns, column_offset,
                                        scale, stream_));
}

// ---- adaLN modulation ----------------------------------------------------------

void CudaBackend::LayerNormModulateForward(const float* x, const float* shift,
                                           const float* scale, float* y, float* mean, float* rstd,
                                           int64_t batch, int64_t seq, int64_t dim,
                                           int64_t cond_stride, float eps) {
  Check("LayerNormModulateForward",
        cuda::LayerNormModulateForward(x, shift, scale, y, mean, rstd, batch, seq, dim,
                                       cond_stride, eps, stream_));
}

void CudaBackend::LayerNormModulateBackward(const float* dy, const float* x, const float* mean,
                                            const float* rstd, const float* scale, float* dx,
                                            float* dshift, float* dscale, int64_t batch,
                                            int64_t seq, int64_t dim, int64_t cond_stride) {
  Check("LayerNormModulateBackward",
        cuda::LayerNormModulateBackward(dy, x, mean, rstd, scale, dx, dshift, dscale, batch, seq,
                                        dim, cond_stride, stream_));
}

void CudaBackend::ModulateForward(const float* x, const float* shift, const float* scale, float* y,
                                  int64_t batch, int64_t seq, int64_t dim, int64_t cond_stride) {
  Check("ModulateForward",
        cuda::ModulateForward(x, shift, scale, y, batch, seq, dim, cond_stride, stream_));
}

void CudaBackend::ModulateBackward(const float* dy, const float* x, const float* scale, float* dx,
                                   float* dshift, float* dscale, int64_t batch, int64_t seq,
                                   int64_t dim, int64_t cond_stride) {
  Check("ModulateBackward", cuda::ModulateBackward(dy, x, scale, dx, dshift, dscale, batch, seq,
                                                   dim, cond_stride, stream_));
}

void CudaBackend::GatedResidualForward(float* residual, const float* y, const float* gate,
                                       int64_t batch, int64_t seq, int64_t dim,
                                       int64_t cond_stride) {
  Check("GatedResidualForward",
        cuda::GatedResidualForward(residual, y, gate, batch, seq, dim, cond_stride, stream_));
}

void CudaBackend::GatedResidualBackward(const float* dresidual, const float* y, const float* gate,
                                        float* dy, float* dgate, int64_t batch, int64_t seq,
                                        int64_t dim, int64_t cond_stride) {
  Check("GatedResidualBackward", cuda::GatedResidualBackward(dresidual, y, gate, dy, dgate, batch,
                                                             seq, dim, cond_stride, stream_));
}

// ---- HSTU ----------------------------------------------------------------------

namespace {
cuda::HstuArgs MakeHstuArgs(const int64_t* offsets, int64_t users, int64_t max_len, int64_t heads,
                            int64_t qk_dim, int64_t v_dim, int64_t qk_stride, int64_t v_stride,
                            const float* pos_bias, const float* time_bias, int32_t num_buckets,
                            const int64_t* timestamps, const int64_t* query_timestamps) {
  cuda::HstuArgs a;
  a.offsets = offsets;
  a.users = users;
  a.max_len = max_len;
  a.heads = heads;
  a.qk_dim = qk_dim;
  a.v_dim = v_dim;
  a.qk_stride = qk_stride;
  a.v_stride = v_stride;
  a.pos_bias = pos_bias;
  a.time_bias = time_bias;
  a.num_buckets = num_buckets;
  a.timestamps = timestamps;
  a.query_timestamps = query_timestamps;
  return a;
}
}  // namespace

void CudaBackend::HstuQueryTimestamps(const int64_t* offsets, int64_t users,
                                      const int64_t* timestamps, const int64_t* next_timestamps,
                                      int64_t* query_timestamps) {
  Check("HstuQueryTimestamps", cuda::HstuQueryTimestamps(offsets, users, timestamps,
                                                         next_timestamps, query_timestamps,
                                                         stream_));
}

void CudaBackend::HstuAttentionForward(const int64_t* offsets, int64_t users, int64_t max_len,
                                       int64_t heads, int64_t qk_dim, int64_t v_dim,
                                       const float* q, const float* k, int64_t qk_stride,
                                       const float* v, int64_t v_stride, const float* pos_bias,
                                       const float* time_bias, int32_t num_buckets,
                                       const int64_t* timestamps,
                                       const int64_t* query_timestamps, float* out) {
  const cuda::HstuArgs args =
      MakeHstuArgs(offsets, users, max_len, heads, qk_dim, v_dim, qk_stride, v_stride, pos_bias,
                   time_bias, num_buckets, timestamps, query_timestamps);
  Check("HstuAttentionForward", cuda::HstuAttentionForward(args, q, k, v, out, stream_));
}

void CudaBackend::HstuAttentionBackward(
    const int64_t* offsets, int64_t users, int64_t max_len, int64_t heads, int64_t qk_dim,
    int64_t v_dim, const float* q, const float* k, int64_t qk_stride, const float* v,
    int64_t v_stride, const float* pos_bias, const float* time_bias, int32_t num_buckets,
    const int64_t* timestamps, const int64_t* query_timestamps, const float* dout, float* dq,
    float* dk, float* dv, float* dpos_bias, float* dtime_bias) {
  const cuda::HstuArgs args =
      MakeHstuArgs(offsets, users, max_len, heads, qk_dim, v_dim, qk_stride, v_stride, pos_bias,
                   time_bias, num_buckets, timestamps, query_timestamps);
  Check("HstuAttentionBackward", cuda::HstuAttentionBackward(args, q, k, v, dout, dq, dk, dv,
                                                             dpos_bias, dtime_bias, stream_));
}

void CudaBackend::HstuNormGateForward(const float* x, const float* u, int64_t u_stride, float* y,
                                      float* mean, float* rstd, int64_t rows, int64_t dim,
                                      float eps) {
  Check("HstuNormGateForward",
        cuda::HstuNormGateForward(x, u, u_stride, y, mean, rstd, rows, dim, eps, stream_));
}

void CudaBackend::HstuNormGateBackward(const float* dy, const float* x, const float* u,
                                       int64_t u_stride, const float* mean, const float* rstd,
                                       float* dx, float* du, int64_t rows, int64_t dim) {
  Check("HstuNormGateBackward", cuda::HstuNormGateBackward(dy, x, u, u_stride, mean, rstd, dx, du,
                                                           rows, dim, stream_));
}

void CudaBackend::HstuNormGateSums(const float* x, int64_t rows, int64_t dim, const float* mean,
                        float* out) {
  Check("HstuNormGateSums", cuda::HstuNormGateSums(x, rows, dim, mean, out, stream_));
}

void CudaBackend::HstuNormGateApply(const float* x, const float* u, int64_t u_stride, const float* mean,
                         const float* squares, int64_t count, float eps, float* y, float* rstd,
                         int64_t rows, int64_t dim) {
  Check("HstuNormGateApply", cuda::HstuNormGateApply(x, u, u_stride, mean, squares, count, eps, y, rstd, rows, dim, stream_));
}

void CudaBackend::HstuNormGateBackwardSums(const float* dy, const float* x, const float* u,
                                int64_t u_stride, const float* mean, const float* rstd,
                                int64_t rows, int64_t dim, float* sums) {
  Check("HstuNormGateBackwardSums", cuda::HstuNormGateBackwardSums(dy, x, u, u_stride, mean, rstd, rows, dim, sums, stream_));
}

void CudaBackend::HstuNormGateBackwardApply(const float* dy, const float* x, const float* u,
                                 int64_t u_stride, const float* mean, const float* rstd,
                                 const float* sums, int64_t count, float* dx, float* du,
                                 int64_t rows, int64_t dim) {
  Check("HstuNormGateBackwardApply", cuda::HstuNormGateBackwardApply(dy, x, u, u_stride, mean, rstd, sums, count, dx, du, rows, dim, stream_));
}

// ---- Routing -------------------------------------------------------------------

void CudaBackend::TopKForward(const float* probs, int32_t* expert_index, float* weights,
                              int64_t tokens, int64_t experts, int64_t k) {
  Check("TopKForward",
        cuda::TopKForward(probs, expert_index, weights, tokens, experts, k, stream_));
}

void CudaBackend::TopKBackward(const float* dweights, const int32_t* expert_index, float* dprobs,
                               int64_t tokens, int64_t experts, int64_t k) {
  Check("TopKBackward",
        cuda::TopKBackward(dweights, expert_index, dprobs, tokens, experts, k, stream_));
}

void CudaBackend::SortByExpert(const int32_t* expert_index, int64_t assignments, int64_t experts,
                               int64_t* expert_offsets, int32_t* row_of_assignment,
                               int32_t* assignment_of_row) {
  Check("SortByExpert", cuda::SortByExpert(expert_index, assignments, experts, expert_offsets,
                                           row_of_assignment, assignment_of_row, stream_));
}

void CudaBackend::PermuteForward(const float* x, const int32_t* assignment_of_row, float* out,
                                 int64_t rows, int64_t dim, int64_t k) {
  Check("PermuteForward",
        cuda::PermuteForward(x, assignment_of_row, out, rows, dim, k, stream_));
}

void CudaBackend::PermuteBackward(const float* dout, const int32_t* row_of_assignment, float* dx,
                                  int64_t tokens, int64_t dim, int64_t k) {
  Check("PermuteBackward",
        cuda::PermuteBackward(dout, row_of_assignment, dx, tokens, dim, k, stream_));
}

void CudaBackend::UnpermuteCombineForward(const float* expert_out,
                                          const int32_t* row_of_assignment, const float* weights,
                                          float* out, int64_t tokens, int64_t dim, int64_t k) {
  Check("UnpermuteCombineForward", cuda::UnpermuteCombineForward(
                                       expert_out, row_of_assignment, weights, out, tokens, dim,
                                       k, stream_));
}

void CudaBackend::UnpermuteCombineBackward(const float* dout, const float* expert_out,
                                           const int32_t* row_of_assignment,
                                           const float* weights, float* dexpert_out,
                                           float* dweights, int64_t tokens, int64_t dim,
                                           int64_t k) {
  Check("UnpermuteCombineBackward",
        cuda::UnpermuteCombineBackward(dout, expert_out, row_of_assignment, weights, dexpert_out,
                                       dweights, tokens, dim, k, stream_));
}

void CudaBackend::MoeRoutingStatistics(const int32_t* expert_index, const float* probs,
                                       int64_t tokens, int64_t experts, int64_t k,
                                       int64_t* counts, double* prob_sums) {
  Check("MoeRoutingStatistics", cuda::MoeRoutingStatistics(expert_index, probs, tokens, experts,
                                                           k, counts, prob_sums, stream_));
}

void CudaBackend::MoeBalance(const int64_t* counts, int64_t count_tokens,
                             const double* prob_sums, int64_t prob_tokens, int64_t experts,
                             int64_t k, double coef, double* out) {
  Check("MoeBalance", cuda::MoeBalance(counts, count_tokens, prob_sums, prob_tokens, experts, k,
                                       coef, out, stream_));
}

void CudaBackend::MoeCapacitySlots(const int32_t* chosen, int64_t assignments, int64_t experts,
                                   int64_t capacity, int32_t* expert_index,
                                   int32_t* row_of_assignment, int32_t* assignment_of_row,
                                   int64_t* dropped) {
  Check("MoeCapacitySlots",
        cuda::MoeCapacitySlots(chosen, assignments, experts, capacity, expert_index,
                               row_of_assignment, assignment_of_row, dropped, stream_));
}

void CudaBackend::MoeRenormalizeForward(const float* raw, float* weights, int64_t tokens,
                                        int64_t k) {
  Check("MoeRenormalizeForward", cuda::MoeRenormalizeForward(raw, weights, tokens, k, stream_));
}

void CudaBackend::MoeRenormalizeBackward(const float* raw, const float* weights,
                                         float* dweights, int64_t tokens, int64_t k) {
  Check("MoeRenormalizeBackward",
        cuda::MoeRenormalizeBackward(raw, weights, dweights, tokens, k, stream_));
}

void CudaBackend::MoeBalanceGradient(const double* f, double scale, double divisor,
                                     float* dprobs, int64_t tokens, int64_t experts) {
  Check("MoeBalanceGradient",
        cuda::MoeBalanceGradient(f, scale, divisor, dprobs, tokens, experts, stream_));
}

// ---- State-space models ----------------------------------------------------------

void CudaBackend::SsdScanForward(const SsdShape& shape, const float* x, const float* dt,
                                 const float* A, const float* B, const float* C, const float* D,
                                 const float* initial_state, float* y, float* final_state) {
  Check("SsdScanForward", cuda::SsdScanForward(shape, x, dt, A, B, C, D, initial_state, y,
                                               final_state, stream_));
}

void CudaBackend::SsdScanBackward(const SsdShape& shape, const float* x, const float* dt,
                                  const float* A, const float* B, const float* C, const float* D,
                                  const float* initial_state, const float* dy,
                                  const float* d_final_state, float* dx, float* ddt, float* dA,
                                  float* dB, float* dC, float* dD, float* d_initial_state) {
  const size_t bytes = sizeof(float) * static_cast<size_t>(cuda::SsdScanBackwardScratch(shape));
  void* scratch = Scratch("SsdScanBackward", bytes);
  if (scratch == nullptr) return;
  Check("SsdScanBackward",
        cuda::SsdScanBackward(shape, x, dt, A, B, C, D, initial_state, dy, d_final_state, dx, ddt,
                              dA, dB, dC, dD, d_initial_state, static_cast<float*>(scratch),
                              stream_));
}

void CudaBackend::SsdStep(const SsdShape& shape, const float* x, const float* dt, const float* A,
                          const float* B, const float* C, const float* D, float* state,
                          float* y) {
  Check("SsdStep", cuda::SsdStep(shape, x, dt, A, B, C, D, state, y, stream_));
}

void CudaBackend::CausalConv1dForward(const CausalConv1dShape& shape, const float* x,
                                      const float* weight, const float* bias, const float* halo,
                                      float* y, float* halo_out) {
  Check("CausalConv1dForward",
        cuda::CausalConv1dForward(shape, x, weight, bias, halo, y, halo_out, stream_));
}

void CudaBackend::CausalConv1dBackward(const CausalConv1dShape& shape, const float* x,
                                       const float* weight, const float* halo, const float* dy,
                                       float* dx, float* dweight, float* dbias, float* dhalo) {
  Check("CausalConv1dBackward", cuda::CausalConv1dBackward(shape, x, weight, halo, dy, dx, dweight,
                                                           dbias, dhalo, stream_));
}

void CudaBackend::CausalConv1dStep(const CausalConv1dShape& shape, const float* x,
                                   const float* weight, const float* bias, float* state,
                                   float* y) {
  Check("CausalConv1dStep",
        cuda::CausalConv1dStep(shape, x, weight, bias, state, y, stream_));
}

// ---- Optimizer and EMA -----------------------------------------------------------

void CudaBackend::DtSoftplusForward(const float* dt_raw, int64_t raw_stride, const float* bias,
                                    float* dt, int64_t rows, int64_t heads) {
  Check("DtSoftplusForward",
        cuda::DtSoftplusForward(dt_raw, raw_stride, bias, dt, rows, heads, stream_));
}

void CudaBackend::DtSoftplusBackward(const float* ddt, const float* dt_raw, int64_t raw_stride,
                                     const float* bias, float* ddt_raw, float* dbias,
                                     int64_t rows, int64_t heads) {
  Check("DtSoftplusBackward", cuda::DtSoftplusBackward(ddt, dt_raw, raw_stride, bias, ddt_raw,
                                                       dbias, rows, heads, stream_));
}

void CudaBackend::GatedRmsNormForward(const float* x, const float* z, int64_t z_stride,
                                      const float* weight, float* y, float* rstd, int64_t rows,
                                      int64_t dim, int64_t group_size, float eps) {
  Check("GatedRmsNormForward", cuda::GatedRmsNormForward(x, z, z_stride, weight, y, rstd, rows,
                                                         dim, group_size, eps, stream_));
}

void CudaBackend::GatedRmsNormBackward(const float* dy, const float* x, const float* z,
                                       int64_t z_stride, const float* weight, const float* rstd,
                                       float* dx, float* dz, float* dweight, int64_t rows,
                                       int64_t dim, int64_t group_size) {
  Check("GatedRmsNormBackward", cuda::GatedRmsNormBackward(dy, x, z, z_stride, weight, rstd, dx,
                                                           dz, dweight, rows, dim, group_size,
                                                           stream_));
}

void CudaBackend::SsmDecayRatesForward(const float* a_log, float* a, int64_t heads) {
  Check("SsmDecayRatesForward", cuda::SsmDecayRatesForward(a_log, a, heads, stream_));
}

void CudaBackend::SsmDecayRatesBackward(const float* da, const float* a, float* da_log,
                                        int64_t heads) {
  Check("SsmDecayRatesBackward", cuda::SsmDecayRatesBackward(da, a, da_log, heads, stream_));
}

void CudaBackend::SsdShardDecay(const float* dt, const float* A, float* decay, int64_t batch,
                                int64_t seq, int64_t heads) {
  Check("SsdShardDecay", cuda::SsdShardDecay(dt, A, decay, batch, seq, heads, stream_));
}

void CudaBackend::AdamWUpdate(const AdamWScalars& scalars, std::span<const AdamWSegment> segments,
                              float* params, const float* grads, float* m, float* v,
                              const float* grad_scale) {
  // Adjacent segments with the same decay flag run as one launch.
  size_t i = 0;
  while (i < segments.size()) {
    size_t j = i;
    while (j + 1 < segments.size() && segments[j + 1].begin == segments[j].end &&
           segments[j + 1].decay == segments[i].decay) {
      ++j;
    }
    Check("AdamWUpdate", cuda::AdamWUpdateRange(scalars, segments[i].begin, segments[j].end,
                                                segments[i].decay, params, grads, m, v,
                                                grad_scale, stream_));
    i = j + 1;
  }
}

void CudaBackend::EmaUpdate(float* ema, const float* params, int64_t n, float blend,
                            const float* guard) {
  Check("EmaUpdate", cuda::EmaUpdate(ema, params, n, blend, guard, stream_));
}

void CudaBackend::SparseRowUpdate(const SparseRowScalars& scalars, const int32_t* rows,
                                  int64_t count, int64_t dim, const float* grads, float* params,
                                  float* m, float* v, float* sums) {
  Check("SparseRowUpdate",
        cuda::SparseRowUpdate(scalars, rows, count, dim, grads, params, m, v, sums, stream_));
}

void CudaBackend::CounterDropoutMask(const int64_t* row_keys, int64_t rows, int64_t width,
                                     uint64_t key, float rate, float* mask) {
  Check("CounterDropoutMask",
        cuda::CounterDropoutMask(row_keys, rows, width, key, rate, mask, stream_));
}

}  // namespace tessera
