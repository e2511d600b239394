// Backend: one device's memory and its kernels, behind one small interface.
//
// In the spirit of ggml's backend boundary (buffer / backend / events),
// without a graph: layers call one method per kernel family on the backend
// that owns the memory they work on, and reach that backend through the
// Arena they already receive (`arena.backend()`). One model source therefore
// runs on every device; nothing outside runtime/backend/ calls a kernel
// library directly.
//
// Memory contract: every pointer passed to an op lives in this backend's
// memory (host memory for the CPU backend, device memory for CUDA). Ops are
// ordered on the backend's own compute stream; they may return before the
// work is done. Host code may read device memory only through CopyToHost.
// No op returns a value computed on the device: losses, norms and the step's
// guard are written to device memory (a training step reads them only at log
// steps, docs/cuda.md). A device's asynchronous errors surface as a Status
// naming the kernel, from `PollErrors()` at step boundaries (without
// waiting) and from `Synchronize()`.
//
// Op conventions (the same as runtime/kernels/cpu): gradients of inputs are
// OVERWRITTEN, gradients of parameters ACCUMULATE (+=) so micro-batches add
// up. The argument lists are those of the CPU kernels; no stream appears in
// them (the backend owns its streams).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "runtime/kernels/kernel_args.h"

namespace tessera {

enum class Device : uint8_t { kCpu, kCuda };

constexpr const char* DeviceName(Device device) { return device == Device::kCpu ? "cpu" : "cuda"; }

// The arithmetic of the GEMM ops (Gemm, GemmBatched): kFp32, or kBf16 —
// inputs rounded to bf16 (nearest even), products accumulated and written
// in fp32. Memory and every other op stay fp32: master weights, gradients,
// optimizer state, norms, softmax and loss statistics (the mixed-precision
// policy of docs/precision.md).
enum class MathPrecision : uint8_t { kFp32, kBf16 };

constexpr const char* PrecisionName(MathPrecision p) {
  return p == MathPrecision::kFp32 ? "fp32" : "bf16";
}

// Orders work between streams of one backend (and, for communicators,
// between the compute stream and a communication stream).
class Event {
 public:
  virtual ~Event() = default;
};

// A GEMM input: the fp32 matrix and, optionally, the same matrix already
// rounded to bf16 (Backend::RoundToBf16, same leading dimension), as bf16
// bit patterns. A bf16 GEMM multiplies the copy instead of rounding the fp32
// matrix again (a weight read by several GEMMs of a step, see
// ParameterStore::ScopedBf16Values; an activation read by several GEMMs); an
// fp32 GEMM reads only `values`. The product is the same either way.
struct GemmOperand {
  const float* values = nullptr;
  const uint16_t* bf16 = nullptr;  // may be null
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  // True when the host may dereference this backend's pointers.
  bool host_accessible() const { return device() == Device::kCpu; }

  // The GEMM ops' arithmetic (see MathPrecision); fp32 unless the run asks
  // for bf16 (train.precision).
  MathPrecision gemm_precision() const { return gemm_precision_; }
  void set_gemm_precision(MathPrecision precision) { gemm_precision_ = precision; }
  // Whether this device runs the GEMM ops at `precision`; a note for the log
  // (e.g. "bf16 emulated: expect no speed-up") in `*note` when it does.
  virtual absl::Status CheckPrecision(MathPrecision precision, std::string* note) const {
    note->clear();
    if (precision == MathPrecision::kFp32) return absl::OkStatus();
    return absl::UnimplementedError("this backend has no bf16 GEMMs");
  }

  // ---- Memory ----------------------------------------------------------
  // `bytes` of uninitialized memory aligned to 64 bytes; an error (not an
  // abort) when the device cannot provide it.
  virtual absl::Status Allocate(size_t bytes, void** out) = 0;
  virtual void Free(void* ptr) = 0;
  virtual void Memset(void* dst, int value, size_t bytes) = 0;
  virtual void CopyToDevice(void* dst, const void* host_src, size_t bytes) = 0;
  // Blocks until the bytes are on the host.
  virtual void CopyToHost(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void Copy(void* dst, const void* src, size_t bytes) = 0;
  // Pinned host memory: `bytes` of host memory (64-byte aligned) that the
  // device's copy engine reads and writes directly: page-locked on CUDA
  // (cudaHostAlloc), ordinary aligned host memory on the CPU (the default
  // here). Page-locking is slow and takes memory the OS cannot swap:
  // allocate staging buffers once and reuse them (PinnedBufferPool in
  // runtime/backend/pinned_pool.h).
  virtual absl::Status AllocatePinnedHost(size_t bytes, void** out);
  virtual void FreePinnedHost(void* ptr);
  // Copies queued on the compute stream in order with its ops; they may
  // return before the bytes have moved. The host side must stay untouched
  // (and CopyToHostAsync's unread) until an event recorded after the copy
  // has passed: Record(event), then HostWait(event) before reusing it. From
  // and to pinned memory the copy overlaps the host's work; the defaults are
  // the blocking copies (the CPU backend, where nothing is asynchronous).
  virtual void CopyToDeviceAsync(void* dst, const void* host_src, size_t bytes) {
    CopyToDevice(dst, host_src, bytes);
  }
  virtual void CopyToHostAsync(void* host_dst, const void* src, size_t bytes) {
    CopyToHost(host_dst, src, bytes);
  }

  // `rows` rows of `row_bytes` each, from src (rows `src_pitch` bytes apart)
  // to dst (rows `dst_pitch` bytes apart), within this backend's memory: the
  // strided copy behind chunk reorders and gathers of column blocks.
  virtual void Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                      size_t row_bytes, size_t rows) = 0;

  // ---- Ordering ----------------------------------------------------------
  virtual std::unique_ptr<Event> CreateEvent() = 0;
  // Marks the point the compute stream has reached.
  virtual void Record(Event& event) = 0;
  // The compute stream waits (without blocking the host) for `event`.
  virtual void StreamWait(const Event& event) = 0;
  // The host blocks until `event` has passed.
  virtual void HostWait(const Event& event) = 0;
  // Waits for all queued work; reports asynchronous errors.
  virtual absl::Status Synchronize() = 0;
  // Reports an asynchronous error that has already surfaced (a failed kernel
  // launch, a fault the device reported) without waiting for queued work:
  // the step boundary's check between the log steps' Synchronize calls.
  virtual absl::Status PollErrors() { return absl::OkStatus(); }

  // ---- GEMM (row-major) ----------------------------------------------------
  //   C[m, n] = alpha * op(A) @ op(B) + beta * C
  //   op(A) is [m, k]: A is [m, k] (lda >= k), or [k, m] when trans_a.
  //   op(B) is [k, n]: B is [k, n] (ldb >= n), or [n, k] when trans_b.
  virtual void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                    int64_t ldc) = 0;
  // `batch` independent GEMMs; matrix i starts at a + i*stride_a (etc.).
  virtual void GemmBatched(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n,
                           int64_t k, float alpha, const float* a, int64_t lda, int64_t stride_a,
                           const float* b, int64_t ldb, int64_t stride_b, float beta, float* c,
                           int64_t ldc, int64_t stride_c) = 0;

  // Independent GEMMs with their own sizes and pointers (an MoE layer's
  // experts: m or k is each expert's row count), the transposes, alpha and
  // beta shared: C_g = alpha op(A_g) op(B_g) + beta C_g for every g. A
  // problem with m == 0 or n == 0 does nothing; k == 0 gives C_g = beta C_g.
  // At gemm_precision(). Every C_g must be disjoint from the others and
  // from every A and B. The result of each problem equals Gemm's on it at
  // the same thread count; the device may run the problems together (CPU:
  // small ones one per thread; CUDA: cublasGemmGroupedBatchedEx). The
  // default runs them one by one through GemmOperands (a bf16 run uses the
  // problems' bf16 copies).
  virtual void GemmGrouped(bool trans_a, bool trans_b, float alpha, float beta,
                           std::span<const GemmProblem> problems) {
    for (const GemmProblem& p : problems) {
      if (p.m == 0 || p.n == 0) continue;
      GemmOperands(trans_a, trans_b, p.m, p.n, p.k, alpha, {p.a, p.a16}, p.lda, {p.b, p.b16},
                   p.ldb, beta, p.c, p.ldc);
    }
  }

  // Gemm with operands that may carry bf16 copies (GemmOperand): the same
  // result as Gemm(a.values, b.values) at either precision, without
  // rounding an operand whose copy is given.
  virtual void GemmOperands(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                            float alpha, GemmOperand a, int64_t lda, GemmOperand b, int64_t ldb,
                            float beta, float* c, int64_t ldc) = 0;
  // y[i] = x[i] rounded to bf16 (nearest even, NaN stays NaN) as bf16 bit
  // patterns: the copies GemmOperand carries, rounded as the bf16 GEMMs round.
  virtual void RoundToBf16(const float* x, uint16_t* y, int64_t n) = 0;

  // ---- Norms over the last dimension of [rows, dim] ------------------------
  // y = (x - mean) * rstd [* gamma + beta]; gamma/beta may be null.
  virtual void LayerNormForward(const float* x, const float* gamma, const float* beta, float* y,
                                float* mean, float* rstd, int64_t rows, int64_t dim, float eps) = 0;
  virtual void LayerNormBackward(const float* dy, const float* x, const float* gamma,
                                 const float* mean, const float* rstd, float* dx, float* dgamma,
                                 float* dbeta, int64_t rows, int64_t dim) = 0;
  // y = x * rstd * gamma, rstd = 1/sqrt(mean(x^2) + eps); gamma may be null.
  virtual void RmsNormForward(const float* x, const float* gamma, float* y, float* rstd,
                              int64_t rows, int64_t dim, float eps) = 0;
  virtual void RmsNormBackward(const float* dy, const float* x, const float* gamma,
                               const float* rstd, float* dx, float* dgamma, int64_t rows,
                               int64_t dim) = 0;

  // ---- Elementwise ----------------------------------------------------------
  virtual void SiluForward(const float* x, float* y, int64_t n) = 0;
  virtual void SiluBackward(const float* dy, const float* x, float* dx, int64_t n) = 0;
  // GELU, tanh approximation.
  virtual void GeluForward(const float* x, float* y, int64_t n) = 0;
  virtual void GeluBackward(const float* dy, const float* x, float* dx, int64_t n) = 0;
  // x: [rows, 2*hidden], row = [gate | up]; y[rows, hidden] = silu(gate) * up.
  virtual void SwigluForward(const float* x, float* y, int64_t rows, int64_t hidden) = 0;
  virtual void SwigluBackward(const float* dy, const float* x, float* dx, int64_t rows,
                              int64_t hidden) = 0;
  // Squared ReLU: y = max(x, 0)^2; dx = 2 max(x, 0) dy (overwritten).
  virtual void ReluSquaredForward(const float* x, float* y, int64_t n) = 0;
  virtual void ReluSquaredBackward(const float* dy, const float* x, float* dx, int64_t n) = 0;
  // y += x
  virtual void AddInPlace(float* y, const float* x, int64_t n) = 0;
  // y[r, :] += bias[:]
  virtual void AddBiasRows(float* y, const float* bias, int64_t rows, int64_t dim) = 0;
  // dbias[:] += sum_r dy[r, :]
  virtual void SumRowsAccumulate(const float* dy, float* dbias, int64_t rows, int64_t dim) = 0;
  // x *= scale
  virtual void Scale(float* x, int64_t n, float scale) = 0;
  // y[r, :] += scale[r] * x[r, :] for rows of `dim`.
  virtual void AddScaledRows(float* y, const float* scale, const float* x, int64_t rows,
                             int64_t dim) = 0;
  // *sum (one double, this backend's memory) = the sum of x[i]^2 in double,
  // in an order independent of the thread count.
  virtual void SumSquares(const float* x, int64_t n, double* sum) = 0;
  // *acc += weight * x[i] for i = 0, 1, ..., n - 1 in that order (doubles in
  // this backend's memory): the gradient norm's weighted partials and their
  // sums over ranks, combined on the device in the order the host would.
  virtual void AccumulateScalars(const double* x, int64_t n, double weight, double* acc) = 0;
  // The step's guard and clip scale from the squared global gradient norm
  // (device memory throughout): when *diverged_step is 0 and the norm is
  // finite, *scale = max_norm / norm if max_norm > 0 and norm > max_norm,
  // else 1 (runtime/optim/clip.h's ClipScale, rounded to float); otherwise
  // *scale = 0, which makes AdamWUpdate and EmaUpdate leave every buffer
  // unchanged, and a non-finite norm records `step` in *diverged_step (the
  // first step that diverged, kept for the trainer's next read).
  virtual void StepGuard(const double* norm_squared, double max_norm, int64_t step,
                         double* diverged_step, float* scale) = 0;
  // out[i] = in[index[i]] (a permutation or gather of elements)
  virtual void GatherElements(const float* in, const int32_t* index, float* out, int64_t n) = 0;
  // out[index[i]] = in[i] (the inverse of GatherElements for a permutation)
  virtual void ScatterElements(const float* in, const int32_t* index, float* out, int64_t n) = 0;

  // ---- Softmax and attention ----------------------------------------------
  virtual void SoftmaxForward(const float* x, float* y, int64_t rows, int64_t dim) = 0;
  // dx = y * (dy - sum(dy * y)); dx overwritten.
  virtual void SoftmaxBackward(const float* dy, const float* y, float* dx, int64_t rows,
                               int64_t dim) = 0;
  // out: [B, S, H*Dh] contiguous; lse: [B, H, S].
  virtual void AttentionForward(const AttentionShape& shape, const float* q, const float* k,
                                const float* v, float* out, float* lse) = 0;
  // dq, dk, dv: the layout of q, k, v; overwritten.
  virtual void AttentionBackward(const AttentionShape& shape, const float* q, const float* k,
                                 const float* v, const float* out, const float* dout,
                                 const float* lse, float* dq, float* dk, float* dv) = 0;

  // ---- Embedding and losses -------------------------------------------------
  // out[i, :] = table[ids[i], :]
  virtual void EmbeddingForward(const int32_t* ids, const float* table, float* out, int64_t n,
                                int64_t dim) = 0;
  // dtable[ids[i], :] += dout[i, :]
  virtual void EmbeddingBackward(const int32_t* ids, const float* dout, float* dtable, int64_t n,
                                 int64_t dim) = 0;
  // out[t, c] = alpha q[t] . rows[slots[t per_token + c]] + beta out[t, c]:
  // each of `tokens` queries [dim] against its `per_token` gathered rows,
  // without gathering them (HSTU's sampled softmax). Backward: dq
  // overwritten, drows accumulated (runtime/kernels/cpu/embedding.h).
  virtual void GatherDotForward(const float* q, const float* rows, const int32_t* slots,
                                int64_t tokens, int64_t per_token, int64_t dim, float alpha,
                                float beta, float* out) = 0;
  virtual void GatherDotBackward(const float* q, const float* rows, const int32_t* slots,
                                 int64_t tokens, int64_t per_token, int64_t dim, float alpha,
                                 const float* dout, float* dq, float* drows) = 0;
  // *loss (one double, this backend's memory) = mean((pred - target)^2); the
  // backward writes scale * d(mean)/dpred.
  virtual void MseForward(const float* pred, const float* target, int64_t n, double* loss) = 0;
  virtual void MseBackward(const float* pred, const float* target, float* dpred, int64_t n,
                           float scale) = 0;
  // *loss (one double, this backend's memory) = the mean over rows of
  // -log softmax(logits[r])[targets[r]]; probs receives the softmax.
  virtual void CrossEntropyForward(const float* logits, const int32_t* targets, float* probs,
                                   int64_t rows, int64_t classes, double* loss) = 0;
  virtual void CrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits,
                                    int64_t rows, int64_t classes, float scale) = 0;
  // Cross-entropy over a vocabulary split in rank order over tp ranks
  // (parallel/tensor_parallel/vocab_parallel_cross_entropy.h): logits
  // [rows, columns] are this rank's columns, global ids column_offset +
  // [0, columns); targets [rows] are global ids. `stats` [rows, 4] (double)
  // per row: this rank's maximum, sum of exp(x - maximum), the target's logit
  // (0 where this rank does not hold the target) and the global id of the
  // row's first maximum.
  virtual void VocabCrossEntropyStats(const float* logits, const int32_t* targets, int64_t rows,
                                      int64_t columns, int64_t column_offset, double* stats) = 0;
  // From every rank's stats, [ranks, rows, 4] in rank order: probs [rows,
  // columns] = this rank's columns of the whole vocabulary's softmax;
  // totals[0] = the sum over rows of -log p(target), totals[1] = the rows
  // whose first maximum over the whole vocabulary is the target. Rows and
  // ranks are combined in a fixed order.
  virtual void VocabCrossEntropyCombine(const float* logits, const double* all_stats,
                                        int64_t ranks, const int32_t* targets, float* probs,
                                        int64_t rows, int64_t columns, double* totals) = 0;
  // dlogits = scale * (probs - onehot(target)) on this rank's columns (only
  // scale * probs in rows whose target another rank holds); overwritten.
  virtual void VocabCrossEntropyBackward(const float* probs, const int32_t* targets,
                                         float* dlogits, int64_t rows, int64_t columns,
                                         int64_t column_offset, float scale) = 0;

  // ---- adaLN modulation (x, y: [B, S, D]; conditions one row per sample,
  // `cond_stride` apart) -------------------------------------------------------
  virtual void ModulateForward(const float* x, const float* shift, const float* scale, float* y,
                               int64_t batch, int64_t seq, int64_t dim, int64_t cond_stride) = 0;
  virtual void ModulateBackward(const float* dy, const float* x, const float* scale, float* dx,
                                float* dshift, float* dscale, int64_t batch, int64_t seq,
                                int64_t dim, int64_t cond_stride) = 0;
  // adaLN's affine-free LayerNorm and its modulation in one pass:
  // y = LayerNorm(x) * (1 + scale[b]) + shift[b], keeping each row's mean
  // and rstd [B * S] for the backward (the normalized rows are not stored).
  virtual void LayerNormModulateForward(const float* x, const float* shift, const float* scale,
                                        float* y, float* mean, float* rstd, int64_t batch,
                                        int64_t seq, int64_t dim, int64_t cond_stride,
                                        float eps) = 0;
  // dx overwritten; dshift[b] and dscale[b] += their sums over the sequence.
  virtual void LayerNormModulateBackward(const float* dy, const float* x, const float* mean,
                                         const float* rstd, const float* scale, float* dx,
                                         float* dshift, float* dscale, int64_t batch, int64_t seq,
                                         int64_t dim, int64_t cond_stride) = 0;
  virtual void GatedResidualForward(float* residual, const float* y, const float* gate,
                                    int64_t batch, int64_t seq, int64_t dim,
                                    int64_t cond_stride) = 0;
  virtual void GatedResidualBackward(const float* dresidual, const float* y, const float* gate,
                                     float* dy, float* dgate, int64_t batch, int64_t seq,
                                     int64_t dim, int64_t cond_stride) = 0;

  // ---- HSTU (jagged pointwise attention) -------------------------------------
  // A batch is U users' sequences concatenated: user u owns tokens
  // [offsets[u], offsets[u+1]) (offsets [U+1], int64, every length <=
  // max_len, zero allowed). Q, K: [total, H, qk_dim], V: [total, H, v_dim],
  // token-major, rows qk_stride / v_stride floats apart (views into a fused
  // projection allowed). Per user, head, query i and key j <= i:
  //   a_ij = SiLU(q_i . k_j + rab_ij) / max_len,  out_i = sum_j a_ij v_j,
  //   rab_ij = pos_bias[max_len - 1 + j - i] + time_bias[bucket(qt_i - t_j)],
  // shared across heads; bucket = floor(ln(max(|dt|, 1)) / 0.301) clamped to
  // [0, num_buckets]. pos_bias [2 max_len - 1] / time_bias [num_buckets + 1]
  // may be null. docs/hstu.md has the details and the reference's conventions.
  //
  // query_timestamps[i] = timestamps[i + 1] within a user; a user's last token
  // takes next_timestamps[u] (the target's), or its own when that is null.
  virtual void HstuQueryTimestamps(const int64_t* offsets, int64_t users,
                                   const int64_t* timestamps, const int64_t* next_timestamps,
                                   int64_t* query_timestamps) = 0;
  // out: [total, H * v_dim] contiguous.
  virtual void HstuAttentionForward(const int64_t* offsets, int64_t users, int64_t max_len,
                                    int64_t heads, int64_t qk_dim, int64_t v_dim, const float* q,
                                    const float* k, int64_t qk_stride, const float* v,
                                    int64_t v_stride, const float* pos_bias,
                                    const float* time_bias, int32_t num_buckets,
                                    const int64_t* timestamps, const int64_t* query_timestamps,
                                    float* out) = 0;
  // dq, dk, dv (layouts of q, k, v) overwritten; dpos_bias, dtime_bias accumulate.
  virtual void HstuAttentionBackward(const int64_t* offsets, int64_t users, int64_t max_len,
                                     int64_t heads, int64_t qk_dim, int64_t v_dim, const float* q,
                                     const float* k, int64_t qk_stride, const float* v,
                                     int64_t v_stride, const float* pos_bias,
                                     const float* time_bias, int32_t num_buckets,
                                     const int64_t* timestamps, const int64_t* query_timestamps,
                                     const float* dout, float* dq, float* dk, float* dv,
                                     float* dpos_bias, float* dtime_bias) = 0;
  // y [rows, dim] = u * LayerNorm(x) (no affine); u rows u_stride apart;
  // mean, rstd [rows] saved. Backward: dx and du overwritten.
  virtual void HstuNormGateForward(const float* x, const float* u, int64_t u_stride, float* y,
                                   float* mean, float* rstd, int64_t rows, int64_t dim,
                                   float eps) = 0;
  virtual void HstuNormGateBackward(const float* dy, const float* x, const float* u,
                                    int64_t u_stride, const float* mean, const float* rstd,
                                    float* dx, float* du, int64_t rows, int64_t dim) = 0;
  // The norm-gate with each row's columns split over ranks (tp over heads):
  // partial row sums the caller all-reduces, then the gate from the summed
  // statistics (runtime/kernels/cpu/hstu.h has the sequence). `count`: the
  // columns of the whole row.
  virtual void HstuNormGateSums(const float* x, int64_t rows, int64_t dim, const float* mean,
                                float* out) = 0;
  virtual void HstuNormGateApply(const float* x, const float* u, int64_t u_stride, const float* mean,
                                 const float* squares, int64_t count, float eps, float* y, float* rstd,
                                 int64_t rows, int64_t dim) = 0;
  virtual void HstuNormGateBackwardSums(const float* dy, const float* x, const float* u,
                                        int64_t u_stride, const float* mean, const float* rstd,
                                        int64_t rows, int64_t dim, float* sums) = 0;
  virtual void HstuNormGateBackwardApply(const float* dy, const float* x, const float* u,
                                         int64_t u_stride, const float* mean, const float* rstd,
                                         const float* sums, int64_t count, float* dx, float* du,
                                         int64_t rows, int64_t dim) = 0;

  // ---- Mixture-of-experts routing (assignment a = token * k + slot) ---------
  virtual void TopKForward(const float* probs, int32_t* expert_index, float* weights,
                           int64_t tokens, int64_t experts, int64_t k) = 0;
  // dprobs[t, expert_index[a]] += dweights[a]
  virtual void TopKBackward(const float* dweights, const int32_t* expert_index, float* dprobs,
                            int64_t tokens, int64_t experts, int64_t k) = 0;
  // Stable counting sort of assignments by expert; negative experts are dropped.
  virtual void SortByExpert(const int32_t* expert_index, int64_t assignments, int64_t experts,
                            int64_t* expert_offsets, int32_t* row_of_assignment,
                            int32_t* assignment_of_row) = 0;
  virtual void PermuteForward(const float* x, const int32_t* assignment_of_row, float* out,
                              int64_t rows, int64_t dim, int64_t k) = 0;
  virtual void PermuteBackward(const float* dout, const int32_t* row_of_assignment, float* dx,
                               int64_t tokens, int64_t dim, int64_t k) = 0;
  virtual void UnpermuteCombineForward(const float* expert_out, const int32_t* row_of_assignment,
                                       const float* weights, float* out, int64_t tokens,
                                       int64_t dim, int64_t k) = 0;
  virtual void UnpermuteCombineBackward(const float* dout, const float* expert_out,
                                        const int32_t* row_of_assignment, const float* weights,
                                        float* dexpert_out, float* dweights, int64_t tokens,
                                        int64_t dim, int64_t k) = 0;
  // The routing bookkeeping, in the backend's memory so that a step reads
  // no routing data on the host but the expert offsets of a dropless layer
  // (runtime/kernels/cpu/routing.h defines each; docs/cuda.md). Doubles
  // live in kI64 tensors (8 bytes each, bit-copied).
  // counts [E] and prob_sums [E] (double) of one routing (balance statistics).
  virtual void MoeRoutingStatistics(const int32_t* expert_index, const float* probs,
                                    int64_t tokens, int64_t experts, int64_t k, int64_t* counts,
                                    double* prob_sums) = 0;
  // out [2E + 1] doubles = [f_e | balance loss | load_e] (ComputeBalance).
  virtual void MoeBalance(const int64_t* counts, int64_t count_tokens, const double* prob_sums,
                          int64_t prob_tokens, int64_t experts, int64_t k, double coef,
                          double* out) = 0;
  // The capacity rule (first come, first served in assignment order) in a
  // fixed-slot layout: expert e owns rows [e * capacity, (e + 1) * capacity).
  virtual void MoeCapacitySlots(const int32_t* chosen, int64_t assignments, int64_t experts,
                                int64_t capacity, int32_t* expert_index,
                                int32_t* row_of_assignment, int32_t* assignment_of_row,
                                int64_t* dropped) = 0;
  // Top-k renormalization per token, and its backward (dweights in place).
  virtual void MoeRenormalizeForward(const float* raw, float* weights, int64_t tokens,
                                     int64_t k) = 0;
  virtual void MoeRenormalizeBackward(const float* raw, const float* weights, float* dweights,
                                      int64_t tokens, int64_t k) = 0;
  // dprobs[t, e] += float(scale * f[e] / divisor) (f: double, device memory).
  virtual void MoeBalanceGradient(const double* f, double scale, double divisor, float* dprobs,
                                  int64_t tokens, int64_t experts) = 0;

  // ---- State-space models (Mamba-2) -------------------------------------------
  // runtime/kernels/cpu/ssd.h and causal_conv1d.h define the shapes and the
  // mathematics; docs/mamba.md the algorithm. All fp32, token-major:
  //   x, y [B, L, H, P]; dt [B, L, H] (softplus'ed, biased); A [H] (negative);
  //   B, C [B, L, G, N] (H % G == 0); D [H] or null; states [B, H, P, N].
  // The chunked SSD scan: initial_state null = zeros; final_state null = not
  // written (state passing across sequence shards and generation use both).
  virtual void SsdScanForward(const SsdShape& shape, const float* x, const float* dt,
                              const float* A, const float* B, const float* C, const float* D,
                              const float* initial_state, float* y, float* final_state) = 0;
  // Gradients of <dy, y> + <d_final_state, final_state> (d_final_state null
  // = zero). dx, ddt, dB, dC, d_initial_state (null = skipped) overwritten;
  // dA, dD accumulate. Chunk states are recomputed from the forward inputs.
  virtual void SsdScanBackward(const SsdShape& shape, const float* x, const float* dt,
                               const float* A, const float* B, const float* C, const float* D,
                               const float* initial_state, const float* dy,
                               const float* d_final_state, float* dx, float* ddt, float* dA,
                               float* dB, float* dC, float* dD, float* d_initial_state) = 0;
  // One generated token: x, y [B, H, P]; dt [B, H]; B, C [B, G, N]; state
  // [B, H, P, N] updated in place (h = exp(dt A) h + dt x B^T; y = h C + D x).
  virtual void SsdStep(const SsdShape& shape, const float* x, const float* dt, const float* A,
                       const float* B, const float* C, const float* D, float* state,
                       float* y) = 0;
  // Depthwise causal conv1d, channels-last: x, y [B, L, C]; weight [C, K];
  // bias [C] or null; halo [B, K-1, C] = the inputs before the sequence (null
  // = zeros); halo_out (null, or may alias halo) = the last K-1 inputs.
  virtual void CausalConv1dForward(const CausalConv1dShape& shape, const float* x,
                                   const float* weight, const float* bias, const float* halo,
                                   float* y, float* halo_out) = 0;
  // dx, dhalo (null = skipped) overwritten; dweight, dbias (null = skipped) accumulate.
  virtual void CausalConv1dBackward(const CausalConv1dShape& shape, const float* x,
                                    const float* weight, const float* halo, const float* dy,
                                    float* dx, float* dweight, float* dbias, float* dhalo) = 0;
  // One generated token: x, y [B, C]; state [B, K-1, C] shifted in place.
  virtual void CausalConv1dStep(const CausalConv1dShape& shape, const float* x,
                                const float* weight, const float* bias, float* state,
                                float* y) = 0;

  // The Mamba-2 mixer's pointwise pieces (runtime/kernels/cpu/ssm_pointwise.h).
  // dt [rows, heads] = softplus(dt_raw + bias), dt_raw rows raw_stride apart
  // (read in place from the in_proj output). Backward: ddt_raw (strided)
  // overwritten, dbias accumulates.
  virtual void DtSoftplusForward(const float* dt_raw, int64_t raw_stride, const float* bias,
                                 float* dt, int64_t rows, int64_t heads) = 0;
  virtual void DtSoftplusBackward(const float* ddt, const float* dt_raw, int64_t raw_stride,
                                  const float* bias, float* ddt_raw, float* dbias, int64_t rows,
                                  int64_t heads) = 0;
  // Gated RMSNorm by group (mamba_ssm's RMSNormGated, norm_before_gate=False):
  // y = RMSNorm_group(x * silu(z)) * weight; x, y [rows, dim]; z rows
  // z_stride apart; rstd [rows, dim / group_size]. Backward: dx, dz (strided)
  // overwritten; dweight accumulates.
  virtual void GatedRmsNormForward(const float* x, const float* z, int64_t z_stride,
                                   const float* weight, float* y, float* rstd, int64_t rows,
                                   int64_t dim, int64_t group_size, float eps) = 0;
  virtual void GatedRmsNormBackward(const float* dy, const float* x, const float* z,
                                    int64_t z_stride, const float* weight, const float* rstd,
                                    float* dx, float* dz, float* dweight, int64_t rows,
                                    int64_t dim, int64_t group_size) = 0;
  // The decay rates A [heads] = -exp(A_log); backward: dA_log += dA * A.
  virtual void SsmDecayRatesForward(const float* a_log, float* a, int64_t heads) = 0;
  virtual void SsmDecayRatesBackward(const float* da, const float* a, float* da_log,
                                     int64_t heads) = 0;
  // A sequence shard's decay [B, H] = exp(A[h] * sum over its L positions of
  // dt[b, t, h]), the sum in double in position order (state passing
  // across sequence shards).
  virtual void SsdShardDecay(const float* dt, const float* A, float* decay, int64_t batch,
                             int64_t seq, int64_t heads) = 0;

  // ---- Optimizer and EMA over flat buffers -----------------------------------
  // One AdamW step over the segments (disjoint, covering the buffers), of
  // the gradients times *grad_scale (one float in this backend's memory,
  // StepGuard's clip scale; null: 1). *grad_scale = 0 leaves params, m and
  // v unchanged (a step whose gradient norm is not finite).
  virtual void AdamWUpdate(const AdamWScalars& scalars, std::span<const AdamWSegment> segments,
                           float* params, const float* grads, float* m, float* v,
                           const float* grad_scale) = 0;
  // ema += blend * (params - ema), blend = 1 - decay; nothing when *guard
  // (StepGuard's scale, this backend's memory; null: always update) is 0.
  virtual void EmaUpdate(float* ema, const float* params, int64_t n, float blend,
                         const float* guard) = 0;
  // A row-sharded table's sparse Adam or row-wise Adagrad on `count`
  // distinct rows (runtime/kernels/cpu/optimizer.h): row rows[k] of params
  // [*, dim] and its state take the gradient grads[k] * grad_scale.
  virtual void SparseRowUpdate(const SparseRowScalars& scalars, const int32_t* rows,
                               int64_t count, int64_t dim, const float* grads, float* params,
                               float* m, float* v, float* sums) = 0;

  // ---- Random masks ------------------------------------------------------------
  // A counter-based dropout mask [rows, width] from each row's key
  // (runtime/kernels/cpu/flat.h): the same bits on every backend and for
  // any shard of the rows.
  virtual void CounterDropoutMask(const int64_t* row_keys, int64_t rows, int64_t width,
                                  uint64_t key, float rate, float* mask) = 0;

 private:
  MathPrecision gemm_precision_ = MathPrecision::kFp32;
};

// Sets a backend's GEMM precision for a scope and restores the previous one
// (the MoE router's GEMMs stay fp32 inside a bf16 run).
class ScopedGemmPrecision {
 public:
  ScopedGemmPrecision(Backend& backend, MathPrecision precision)
      : backend_(backend), previous_(backend.gemm_precision()) {
    backend_.set_gemm_precision(precision);
  }
  ~ScopedGemmPrecision() { backend_.set_gemm_precision(previous_); }
  ScopedGemmPrecision(const ScopedGemmPrecision&) = delete;
  ScopedGemmPrecision& operator=(const ScopedGemmPrecision&) = delete;

 private:
  Backend& backend_;
  MathPrecision previous_;
};

// The process's CPU backend (runtime/backend/cpu_backend.cc): host memory is
// one resource per process and the backend keeps no state, so one instance
// serves every host buffer.
Backend& HostBackend();

}  // namespace tessera
