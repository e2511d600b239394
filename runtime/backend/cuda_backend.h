// CudaBackend: one CUDA device's memory and the kernels of
// runtime/kernels/cuda (cuBLASLt GEMMs, fused CUDA kernels), queued on one
// compute stream the backend owns.
//
// Memory comes from the device's stream-ordered pool (cudaMallocAsync) with
// its release threshold raised to "never", so memory a step frees is kept
// and the next step's allocations are served from the pool without calling
// the driver; the Arena on top already reuses its blocks. Scratch the
// kernels need (reduction partials, the attention backward's row sums, SSD
// checkpoints) is one grow-only buffer.
//
// Ops return nothing (the Backend contract): a failed launch or argument
// check is recorded, the first one wins, and Synchronize() and PollErrors()
// return it naming the op. Asynchronous faults surface at the next
// Synchronize() or PollErrors() (cudaStreamQuery: the fault is reported
// once the stream has reached it, without waiting) as a Status naming the
// last op queued; TESSERA_CUDA_SYNC_EACH_OP=1 synchronizes after
// every op so the faulting one is named exactly (slow; for debugging). An
// error is sticky: a CUDA context that faulted stays unusable.
//
// One thread drives a backend (the compute stream is not shared);
// communicators order their own streams against it with events.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/backend/backend.h"
#include "runtime/backend/staging_ring.h"

namespace tessera {
namespace cuda {
class GemmContext;
class GroupedGemmContext;
}

class CudaBackend final : public Backend {
 public:
  // A backend on CUDA device `device` (made current on the calling thread).
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(int device);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::kCuda; }
  // bf16 GEMMs (tensor cores, fp32 accumulation) need compute capability 8.0+.
  absl::Status CheckPrecision(MathPrecision precision, std::string* note) const override;
  int device_index() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  // Bytes the pool holds (in use or cached for reuse) and the device's free/total.
  size_t pool_reserved_bytes() const;

  absl::Status Allocate(size_t bytes, void** out) override;
  void Free(void* ptr) override;
  void Memset(void* dst, int value, size_t bytes) override;
  // The host buffer may be reused as soon as the call returns.
  void CopyToDevice(void* dst, const void* host_src, size_t bytes) override;
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override;
  // Page-locked (cudaHostAlloc), so the asynchronous copies below run on
  // the copy engine without staging; freeing (cudaFreeHost) waits for the device.
  absl::Status AllocatePinnedHost(size_t bytes, void** out) override;
  void FreePinnedHost(void* ptr) override;
  // cudaMemcpyAsync on the compute stream; no wait (see Backend).
  void CopyToDeviceAsync(void* dst, const void* host_src, size_t bytes) override;
  void CopyToHostAsync(void* host_dst, const void* src, size_t bytes) override;
  void Copy(void* dst, const void* src, size_t bytes) override;
  void Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
              size_t rows) override;

  std::unique_ptr<Event> CreateEvent() override;
  void Record(Event& event) override;
  void StreamWait(const Event& event) override;
  void HostWait(const Event& event) override;
  absl::Status Synchronize() override;
  absl::Status PollErrors() override;

  void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
            const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
            int64_t ldc) override;
  void GemmBatched(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n, int64_t k,
                   float alpha, const float* a, int64_t lda, int64_t stride_a, const float* b,
                   int64_t ldb, int64_t stride_b, float beta, float* c, int64_t ldc,
                   int64_t stride_c) override;
  // One cublasGemmGroupedBatchedEx call, fp32 or (a bf16 run) bf16 A and B
  // with fp32 C; k == 0 problems one by one (runtime/kernels/cuda/gemm_grouped.h).
  void GemmGrouped(bool trans_a, bool trans_b, float alpha, float beta,
                   std::span<const GemmProblem> problems) override;

  void GemmOperands(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    GemmOperand a, int64_t lda, GemmOperand b, int64_t ldb, float beta, float* c,
                    int64_t ldc) override;
  void RoundToBf16(const float* x, uint16_t* y, int64_t n) override;
  void LayerNormForward(const float* x, const float* gamma, const float* beta, float* y,
                        float* mean, float* rstd, int64_t rows, int64_t dim, float eps) override;
  void LayerNormBackward(const float* dy, const float* x, const float* gamma, const float* mean,
                         const float* rstd, float* dx, float* dgamma, float* dbeta, int64_t rows,
                         int64_t dim) override;
  void RmsNormForward(const float* x, const float* gamma, float* y, float* rstd, int64_t rows,
                      int64_t dim, float eps) override;
  void RmsNormBackward(const float* dy, const float* x, const float* gamma, const float* rstd,
                       float* dx, float* dgamma, int64_t rows, int64_t dim) override;
  void SiluForward(const float* x, float* y, int64_t n) override;
  void SiluBackward(const float* dy, const float* x, float* dx, int64_t n) override;
  void GeluForward(const float* x, float* y, int64_t n) override;
  void GeluBackward(const float* dy, const float* x, float* dx, int64_t n) override;
  void SwigluForward(const float* x, float* y, int64_t rows, int64_t hidden) override;
  void SwigluBackward(const float* dy, const float* x, float* dx, int64_t rows,
                      int64_t hidden) override;
  void ReluSquaredForward(const float* x, float* y, int64_t n) override;
  void ReluSquaredBackward(const float* dy, const float* x, float* dx, int64_t n) override;
  void AddInPlace(float* y, const float* x, int64_t n) override;
  void AddBiasRows(float* y, const float* bias, int64_t rows, int64_t dim) override;
  void SumRowsAccumulate(const float* dy, float* dbias, int64_t rows, int64_t dim) override;
  void Scale(float* x, int64_t n, float scale) override;
  void AddScaledRows(float* y, const float* scale, const float* x, int64_t rows,
                     int64_t dim) override;
  void SumSquares(const float* x, int64_t n, double* sum) override;
  void AccumulateScalars(const double* x, int64_t n, double weight, double* acc) override;
  void StepGuard(const double* norm_squared, double max_norm, int64_t step, double* diverged_step,
                 float* scale) override;
  void GatherElements(const float* in, const int32_t* index, float* out, int64_t n) override;
  void ScatterElements(const float* in, const int32_t* index, float* out, int64_t n) override;
  void SoftmaxForward(const float* x, float* y, int64_t rows, int64_t dim) override;
  void SoftmaxBackward(const float* dy, const float* y, float* dx, int64_t rows,
                       int64_t dim) override;
  void AttentionForward(const AttentionShape& shape, const float* q, const float* k, const float* v,
                        float* out, float* lse) override;
  void AttentionBackward(const AttentionShape& shape, const float* q, const float* k,
                         const float* v, const float* out, const float* dout, const float* lse,
                         float* dq, float* dk, float* dv) override;
  void EmbeddingForward(const int32_t* ids, const float* table, float* out, int64_t n,
                        int64_t dim) override;
  void EmbeddingBackward(const int32_t* ids, const float* dout, float* dtable, int64_t n,
                         int64_t dim) override;
  void GatherDotForward(const float* q, const float* rows, const int32_t* slots, int64_t tokens,
                        int64_t per_token, int64_t dim, float alpha, float beta,
                        float* out) override;
  void GatherDotBackward(const float* q, const float* rows, const int32_t* slots, int64_t tokens,
                         int64_t per_token, int64_t dim, float alpha, const float* dout, float* dq,
                         float* drows) override;
  void MseForward(const float* pred, const float* target, int64_t n, double* loss) override;
  void MseBackward(const float* pred, const float* target, float* dpred, int64_t n,
                   float scale) override;
  void CrossEntropyForward(const float* logits, const int32_t* targets, float* probs,
                           int64_t rows, int64_t classes, double* loss) override;
  void CrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits,
                            int64_t rows, int64_t classes, float scale) override;
  void VocabCrossEntropyStats(const float* logits, const int32_t* targets, int64_t rows,
                              int64_t columns, int64_t column_offset, double* stats) override;
  void VocabCrossEntropyCombine(const float* logits, const double* all_stats, int64_t ranks,
                                const int32_t* targets, float* probs, int64_t rows,
                                int64_t columns, double* totals) override;
  void VocabCrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits,
                                 int64_t rows, int64_t columns, int64_t column_offset,
                                 float scale) override;
  void LayerNormModulateForward(const float* x, const float* shift, const float* scale, float* y,
                                float* mean, float* rstd, int64_t batch, int64_t seq, int64_t dim,
                                int64_t cond_stride, float eps) override;
  void LayerNormModulateBackward(const float* dy, const float* x, const float* mean,
                                 const float* rstd, const float* scale, float* dx, float* dshift,
                                 float* dscale, int64_t batch, int64_t seq, int64_t dim,
                                 int64_t cond_stride) override;
  void ModulateForward(const float* x, const float* shift, const float* scale, float* y,
                       int64_t batch, int64_t seq, int64_t dim, int64_t cond_stride) override;
  void ModulateBackward(const float* dy, const float* x, const float* scale, float* dx,
                        float* dshift, float* dscale, int64_t batch, int64_t seq, int64_t dim,
                        int64_t cond_stride) override;
  void GatedResidualForward(float* residual, const float* y, const float* gate, int64_t batch,
                            int64_t seq, int64_t dim, int64_t cond_stride) override;
  void GatedResidualBackward(const float* dresidual, const float* y, const float* gate, float* dy,
                             float* dgate, int64_t batch, int64_t seq, int64_t dim,
                             int64_t cond_stride) override;
  void HstuQueryTimestamps(const int64_t* offsets, int64_t users, const int64_t* timestamps,
                           const int64_t* next_timestamps, int64_t* query_timestamps) override;
  void HstuAttentionForward(const int64_t* offsets, int64_t users, int64_t max_len, int64_t heads,
                            int64_t qk_dim, int64_t v_dim, const float* q, const float* k,
                            int64_t qk_stride, const float* v, int64_t v_stride,
                            const float* pos_bias, const float* time_bias, int32_t num_buckets,
                            const int64_t* timestamps, const int64_t* query_timestamps,
                            float* out) override;
  void HstuAttentionBackward(const int64_t* offsets, int64_t users, int64_t max_len, int64_t heads,
                             int64_t qk_dim, int64_t v_dim, const float* q, const float* k,
                             int64_t qk_stride, const float* v, int64_t v_stride,
                             const float* pos_bias, const float* time_bias, int32_t num_buckets,
                             const int64_t* timestamps, const int64_t* query_timestamps,
                             const float* dout, float* dq, float* dk, float* dv, float* dpos_bias,
                             float* dtime_bias) override;
  void HstuNormGateForward(const float* x, const float* u, int64_t u_stride, float* y, float* mean,
                           float* rstd, int64_t rows, int64_t dim, float eps) override;
  void HstuNormGateBackward(const float* dy, const float* x, const float* u, int64_t u_stride,
                            const float* mean, const float* rstd, float* dx, float* du,
                            int64_t rows, int64_t dim) override;
  void HstuNormGateSums(const float* x, int64_t rows, int64_t dim, const float* mean,
                        float* out) override;
  void HstuNormGateApply(const float* x, const float* u, int64_t u_stride, const float* mean,
                         const float* squares, int64_t count, float eps, float* y, float* rstd,
                         int64_t rows, int64_t dim) override;
  void HstuNormGateBackwardSums(const float* dy, const float* x, const float* u,
                                int64_t u_stride, const float* mean, const float* rstd,
                                int64_t rows, int64_t dim, float* sums) override;
  void HstuNormGateBackwardApply(const float* dy, const float* x, const float* u,
                                 int64_t u_stride, const float* mean, const float* rstd,
                                 const float* sums, int64_t count, float* dx, float* du,
                                 int64_t rows, int64_t dim) override;
  void TopKForward(const float* probs, int32_t* expert_index, float* weights, int64_t tokens,
                   int64_t experts, int64_t k) override;
  void TopKBackward(const float* dweights, const int32_t* expert_index, float* dprobs,
                    int64_t tokens, int64_t experts, int64_t k) override;
  void SortByExpert(const int32_t* expert_index, int64_t assignments, int64_t experts,
                    int64_t* expert_offsets, int32_t* row_of_assignment,
                    int32_t* assignment_of_row) override;
  void PermuteForward(const float* x, const int32_t* assignment_of_row, float* out, int64_t rows,
                      int64_t dim, int64_t k) override;
  void PermuteBackward(const float* dout, const int32_t* row_of_assignment, float* dx,
                       int64_t tokens, int64_t dim, int64_t k) override;
  void UnpermuteCombineForward(const float* expert_out, const int32_t* row_of_assignment,
                               const float* weights, float* out, int64_t tokens, int64_t dim,
                               int64_t k) override;
  void UnpermuteCombineBackward(const float* dout, const float* expert_out,
                                const int32_t* row_of_assignment, const float* weights,
                                float* dexpert_out, float* dweights, int64_t tokens, int64_t dim,
                                int64_t k) override;
  void MoeRoutingStatistics(const int32_t* expert_index, const float* probs, int64_t tokens,
                            int64_t experts, int64_t k, int64_t* counts,
                            double* prob_sums) override;
  void MoeBalance(const int64_t* counts, int64_t count_tokens, const double* prob_sums,
                  int64_t prob_tokens, int64_t experts, int64_t k, double coef,
                  double* out) override;
  void MoeCapacitySlots(const int32_t* chosen, int64_t assignments, int64_t experts,
                        int64_t capacity, int32_t* expert_index, int32_t* row_of_assignment,
                        int32_t* assignment_of_row, int64_t* dropped) override;
  void MoeRenormalizeForward(const float* raw, float* weights, int64_t tokens,
                             int64_t k) override;
  void MoeRenormalizeBackward(const float* raw, const float* weights, float* dweights,
                              int64_t tokens, int64_t k) override;
  void MoeBalanceGradient(const double* f, double scale, double divisor, float* dprobs,
                          int64_t tokens, int64_t experts) override;
  void SsdScanForward(const SsdShape& shape, const float* x, const float* dt, const float* A,
                      const float* B, const float* C, const float* D, const float* initial_state,
                      float* y, float* final_state) override;
  void SsdScanBackward(const SsdShape& shape, const float* x, const float* dt, const float* A,
                       const float* B, const float* C, const float* D, const float* initial_state,
                       const float* dy, const float* d_final_state, float* dx, float* ddt,
                       float* dA, float* dB, float* dC, float* dD,
                       float* d_initial_state) override;
  void SsdStep(const SsdShape& shape, const float* x, const float* dt, const float* A,
               const float* B, const float* C, const float* D, float* state, float* y) override;
  void CausalConv1dForward(const CausalConv1dShape& shape, const float* x, const float* weight,
                           const float* bias, const float* halo, float* y,
                           float* halo_out) override;
  void CausalConv1dBackward(const CausalConv1dShape& shape, const float* x, const float* weight,
                            const float* halo, const float* dy, float* dx, float* dweight,
                            float* dbias, float* dhalo) override;
  void CausalConv1dStep(const CausalConv1dShape& shape, const float* x, const float* weight,
                        const float* bias, float* state, float* y) override;
  void DtSoftplusForward(const float* dt_raw, int64_t raw_stride, const float* bias, float* dt,
                         int64_t rows, int64_t heads) override;
  void DtSoftplusBackward(const float* ddt, const float* dt_raw, int64_t raw_stride,
                          const float* bias, float* ddt_raw, float* dbias, int64_t rows,
                          int64_t heads) override;
  void GatedRmsNormForward(const float* x, const float* z, int64_t z_stride, const float* weight,
                           float* y, float* rstd, int64_t rows, int64_t dim, int64_t group_size,
                           float eps) override;
  void GatedRmsNormBackward(const float* dy, const float* x, const float* z, int64_t z_stride,
                            const float* weight, const float* rstd, float* dx, float* dz,
                            float* dweight, int64_t rows, int64_t dim,
                            int64_t group_size) override;
  void SsmDecayRatesForward(const float* a_log, float* a, int64_t heads) override;
  void SsmDecayRatesBackward(const float* da, const float* a, float* da_log,
                             int64_t heads) override;
  void SsdShardDecay(const float* dt, const float* A, float* decay, int64_t batch, int64_t seq,
                     int64_t heads) override;
  void AdamWUpdate(const AdamWScalars& scalars, std::span<const AdamWSegment> segments,
                   float* params, const float* grads, float* m, float* v,
                   const float* grad_scale) override;
  void EmaUpdate(float* ema, const float* params, int64_t n, float blend,
                 const float* guard) override;
  void SparseRowUpdate(const SparseRowScalars& scalars, const int32_t* rows, int64_t count,
                       int64_t dim, const float* grads, float* params, float* m, float* v,
                       float* sums) override;
  void CounterDropoutMask(const int64_t* row_keys, int64_t rows, int64_t width, uint64_t key,
                          float rate, float* mask) override;

 private:
  CudaBackend() = default;
  // Records the first failure, naming `op`; in sync-each-op mode also waits
  // for the op and checks it.
  void Check(const char* op, absl::Status status);
  // Device scratch of at least `bytes` (grow-only), or null after recording an error.
  void* Scratch(const char* op, size_t bytes);
  // The Status of an asynchronous error `error` (cudaSuccess: none), recorded
  // as the first error if none is yet.
  void NoteAsynchronousError(cudaError_t error);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaMemPool_t pool_ = nullptr;
  std::unique_ptr<cuda::GemmContext> gemm_;
  std::unique_ptr<cuda::GroupedGemmContext> grouped_;  // made by the first GemmGrouped
  // Stages CopyToDevice's sources so that the host does not wait for the
  // stream (runtime/backend/staging_ring.h).
  std::unique_ptr<StagingRing> staging_;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  absl::Status error_;
  const char* last_op_ = "none";
  int64_t ops_since_sync_ = 0;
  bool sync_each_op_ = false;
};

}  // namespace tessera
