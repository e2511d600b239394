// CpuBackend: host memory and the kernels of runtime/kernels/cpu (oneDNN
// GEMMs, vectorized OpenMP loops). Every op runs to completion before it
// returns, so events and Synchronize() are trivially satisfied.
#pragma once

#include "runtime/backend/backend.h"

namespace tessera {

class CpuBackend : public Backend {
 public:
  Device device() const override { return Device::kCpu; }

  absl::Status Allocate(size_t bytes, void** out) override;
  void Free(void* ptr) override;
  void Memset(void* dst, int value, size_t bytes) override;
  void CopyToDevice(void* dst, const void* host_src, size_t bytes) override;
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override;
  void Copy(void* dst, const void* src, size_t bytes) override;
  void Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
              size_t rows) override;

  std::unique_ptr<Event> CreateEvent() override;
  void Record(Event&) override {}
  void StreamWait(const Event&) override {}
  void HostWait(const Event&) override {}
  absl::Status Synchronize() override { return absl::OkStatus(); }
  // bf16 needs oneDNN's bf16 matmul on this CPU (AVX-512; native with
  // AVX-512 BF16 or AMX, emulated and slow otherwise).
  absl::Status CheckPrecision(MathPrecision precision, std::string* note) const override;

  void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
            const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
            int64_t ldc) override;
  void GemmBatched(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n, int64_t k,
                   float alpha, const float* a, int64_t lda, int64_t stride_a, const float* b,
                   int64_t ldb, int64_t stride_b, float beta, float* c, int64_t ldc,
                   int64_t stride_c) override;
  // fp32: several problems go one per thread, largest first (oneDNN runs
  // single-threaded inside the region), unless one alone is large enough to
  // use every thread; bf16: one by one.
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
};

// Threads of the CPU kernels (oneDNN and our OpenMP loops) in this process.
void SetHostThreads(int threads);
int HostThreads();

}  // namespace tessera
