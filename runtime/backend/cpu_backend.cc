#include "runtime/backend/cpu_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "runtime/kernels/cpu/activation.h"
#include "runtime/kernels/cpu/attention.h"
#include "runtime/kernels/cpu/attention_bf16.h"
#include "runtime/kernels/cpu/causal_conv1d.h"
#include "runtime/kernels/cpu/embedding.h"
#include "runtime/kernels/cpu/flat.h"
#include "runtime/kernels/cpu/gemm.h"
#include "runtime/kernels/cpu/gemm_bf16.h"
#include "runtime/kernels/cpu/hstu.h"
#include "runtime/kernels/cpu/layer_norm.h"
#include "runtime/kernels/cpu/loss.h"
#include "runtime/kernels/cpu/modulate.h"
#include "runtime/kernels/cpu/optimizer.h"
#include "runtime/kernels/cpu/routing.h"
#include "runtime/kernels/cpu/softmax.h"
#include "runtime/kernels/cpu/ssd.h"
#include "runtime/kernels/cpu/ssm_pointwise.h"

namespace tessera {
namespace {
constexpr size_t kAlignment = 64;
class CpuEvent final : public Event {};
}  // namespace

absl::Status CpuBackend::Allocate(size_t bytes, void** out) {
  const size_t rounded = (bytes / kAlignment + 1) * kAlignment;  // never 0, no overflow
  if (bytes > (size_t{1} << 48)) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("cannot allocate %d bytes of host memory", bytes));
  }
  *out = std::aligned_alloc(kAlignment, rounded);
  if (*out == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("out of host memory allocating %d bytes", bytes));
  }
  return absl::OkStatus();
}

void CpuBackend::Free(void* ptr) { std::free(ptr); }

void CpuBackend::Memset(void* dst, int value, size_t bytes) {
  if (bytes > 0) std::memset(dst, value, bytes);
}
void CpuBackend::CopyToDevice(void* dst, const void* host_src, size_t bytes) {
  if (bytes > 0) std::memcpy(dst, host_src, bytes);
}
void CpuBackend::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  if (bytes > 0) std::memcpy(host_dst, src, bytes);
}
void CpuBackend::Copy(void* dst, const void* src, size_t bytes) {
  if (bytes > 0 && dst != src) std::memmove(dst, src, bytes);
}

void CpuBackend::Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                        size_t row_bytes, size_t rows) {
  char* out = static_cast<char*>(dst);
  const char* in = static_cast<const char*>(src);
#pragma omp parallel for schedule(static) if (rows * row_bytes >= (size_t{1} << 17))
  for (size_t r = 0; r < rows; ++r) std::memcpy(out + r * dst_pitch, in + r * src_pitch, row_bytes);
}

absl::Status CpuBackend::CheckPrecision(MathPrecision precision, std::string* note) const {
  note->clear();
  if (precision == MathPrecision::kFp32) return absl::OkStatus();
  std::string why;
  const std::string support = cpu::Bf16GemmSupport(&why);
  if (support.empty()) return absl::UnimplementedError(why);
  if (support == "emulated") {
    *note = "this CPU has AVX-512 but no bf16 instructions: oneDNN emulates bf16 GEMMs, "
            "usually slower than fp32";
  }
  return absl::OkStatus();
}

std::unique_ptr<Event> CpuBackend::CreateEvent() { return std::make_unique<CpuEvent>(); }

void CpuBackend::Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                      float* c, int64_t ldc) {
  if (gemm_precision() == MathPrecision::kBf16) {
    cpu::GemmBf16(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  cpu::Gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void CpuBackend::GemmBatched(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n,
                             int64_t k, float alpha, const float* a, int64_t lda, int64_t stride_a,
                             const float* b, int64_t ldb, int64_t stride_b, float beta, float* c,
                             int64_t ldc, int64_t stride_c) {
  if (gemm_precision() == MathPrecision::kBf16) {
    cpu::GemmBatchedBf16(trans_a, trans_b, batch, m, n, k, alpha, a, lda, stride_a, b, ldb,
                         stride_b, beta, c, ldc, stride_c);
    return;
  }
  cpu::GemmBatched(trans_a, trans_b, batch, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b,
                   beta, c, ldc, stride_c);
}

void CpuBackend::GemmGrouped(bool trans_a, bool trans_b, float alpha, float beta,
                             std::span<const GemmProblem> problems) {
  const bool bf16 = gemm_precision() == MathPrecision::kBf16;
  // Largest first, so the dynamic schedule ends with the small ones and the
  // threads finish together; empty problems are dropped.
  std::vector<const GemmProblem*> order;
  order.reserve(problems.size());
  int64_t total = 0, largest = 0;
  for (const GemmProblem& p : problems) {
    if (p.m == 0 || p.n == 0) continue;
    order.push_back(&p);
    const int64_t work = p.m * p.n * std::max<int64_t>(p.k, 1);
    total += work;
    largest = std::max(largest, work);
  }
  std::stable_sort(order.begin(), order.end(), [](const GemmProblem* x, const GemmProblem* y) {
    return x->m * x->n * x->k > y->m * y->n * y->k;
  });
  const int64_t threads = cpu::NumThreads();
  const int64_t count = static_cast<int64_t>(order.size());
  // One per thread pays off when there are enough problems to share out and
  // none dominates (each thread then runs whole GEMMs with no fork/join
  // inside them); otherwise each GEMM uses every thread.
  const bool per_thread = threads > 1 && count >= 2 * threads &&
                          largest * threads <= 2 * total && cpu::ShouldParallelize(total);
#pragma omp parallel for schedule(dynamic, 1) if (per_thread)
  for (int64_t i = 0; i < count; ++i) {
    const GemmProblem& p = *order[static_cast<size_t>(i)];
    if (bf16) {
      cpu::GemmBf16(trans_a, trans_b, p.m, p.n, p.k, alpha, p.a, p.a16, p.lda, p.b, p.b16, p.ldb,
                    beta, p.c, p.ldc);
    } else {
      cpu::Gemm(trans_a, trans_b, p.m, p.n, p.k, alpha, p.a, p.lda, p.b, p.ldb, beta, p.c, p.ldc);
    }
  }
}

void CpuBackend::GemmOperands(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                              float alpha, GemmOperand a, int64_t lda, GemmOperand b, int64_t ldb,
                              float beta, float* c, int64_t ldc) {
  if (gemm_precision() == MathPrecision::kBf16) {
    cpu::GemmBf16(trans_a, trans_b, m, n, k, alpha, a.values, a.bf16, lda, b.values, b.bf16, ldb,
                  beta, c, ldc);
    return;
  }
  cpu::Gemm(trans_a, trans_b, m, n, k, alpha, a.values, lda, b.values, ldb, beta, c, ldc);
}

void CpuBackend::RoundToBf16(const float* x, uint16_t* y, int64_t n) { cpu::RoundToBf16(x, y, n); }

void CpuBackend::LayerNormForward(const float* x, const float* gamma, const float* beta, float* y,
                                  float* mean, float* rstd, int64_t rows, int64_t dim, float eps) {
  cpu::LayerNormForward(x, gamma, beta, y, mean, rstd, rows, dim, eps);
}

void CpuBackend::LayerNormBackward(const float* dy, const float* x, const float* gamma,
                                   const float* mean, const float* rstd, float* dx, float* dgamma,
                                   float* dbeta, int64_t rows, int64_t dim) {
  cpu::LayerNormBackward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, rows, dim);
}

void CpuBackend::RmsNormForward(const float* x, const float* gamma, float* y, float* rstd,
                                int64_t rows, int64_t dim, float eps) {
  cpu::RmsNormForward(x, gamma, y, rstd, rows, dim, eps);
}

void CpuBackend::RmsNormBackward(const float* dy, const float* x, const float* gamma,
                                 const float* rstd, float* dx, float* dgamma, int64_t rows,
                                 int64_t dim) {
  cpu::RmsNormBackward(dy, x, gamma, rstd, dx, dgamma, rows, dim);
}

void CpuBackend::SiluForward(const float* x, float* y, int64_t n) { cpu::SiluForward(x, y, n); }

void CpuBackend::SiluBackward(const float* dy, const float* x, float* dx, int64_t n) {
  cpu::SiluBackward(dy, x, dx, n);
}

void CpuBackend::GeluForward(const float* x, float* y, int64_t n) { cpu::GeluForward(x, y, n); }

void CpuBackend::GeluBackward(const float* dy, const float* x, float* dx, int64_t n) {
  cpu::GeluBackward(dy, x, dx, n);
}

void CpuBackend::SwigluForward(const float* x, float* y, int64_t rows, int64_t hidden) {
  cpu::SwigluForward(x, y, rows, hidden);
}

void CpuBackend::SwigluBackward(const float* dy, const float* x, float* dx, int64_t rows,
                                int64_t hidden) {
  cpu::SwigluBackward(dy, x, dx, rows, hidden);
}

void CpuBackend::ReluSquaredForward(const float* x, float* y, int64_t n) {
  cpu::ReluSquaredForward(x, y, n);
}

void CpuBackend::ReluSquaredBackward(const float* dy, const float* x, float* dx, int64_t n) {
  cpu::ReluSquaredBackward(dy, x, dx, n);
}

void CpuBackend::AddInPlace(float* y, const float* x, int64_t n) { cpu::AddInPlace(y, x, n); }

void CpuBackend::AddBiasRows(float* y, const float* bias, int64_t rows, int64_t dim) {
  cpu::AddBiasRows(y, bias, rows, dim);
}

void CpuBackend::SumRowsAccumulate(const float* dy, float* dbias, int64_t rows, int64_t dim) {
  cpu::SumRowsAccumulate(dy, dbias, rows, dim);
}

void CpuBackend::Scale(float* x, int64_t n, float scale) { cpu::Scale(x, n, scale); }

void CpuBackend::AddScaledRows(float* y, const float* scale, const float* x, int64_t rows,
                               int64_t dim) {
  cpu::AddScaledRows(y, scale, x, rows, dim);
}

void CpuBackend::SumSquares(const float* x, int64_t n, double* sum) {
  *sum = cpu::SumSquares(x, n);
}

void CpuBackend::AccumulateScalars(const double* x, int64_t n, double weight, double* acc) {
  cpu::AccumulateScalars(x, n, weight, acc);
}

void CpuBackend::StepGuard(const double* norm_squared, double max_norm, int64_t step,
                           double* diverged_step, float* scale) {
  cpu::StepGuard(norm_squared, max_norm, step, diverged_step, scale);
}

void CpuBackend::GatherElements(const float* in, const int32_t* index, float* out, int64_t n) {
  cpu::GatherElements(in, index, out, n);
}

void CpuBackend::ScatterElements(const float* in, const int32_t* index, float* out, int64_t n) {
  cpu::ScatterElements(in, index, out, n);
}

void CpuBackend::SoftmaxForward(const float* x, float* y, int64_t rows, int64_t dim) {
  cpu::SoftmaxForward(x, y, rows, dim);
}

void CpuBackend::SoftmaxBackward(const float* dy, const float* y, float* dx, int64_t rows,
                                 int64_t dim) {
  cpu::SoftmaxBackward(dy, y, dx, rows, dim);
}

void CpuBackend::AttentionForward(const AttentionShape& shape, const float* q, const float* k,
                                  const float* v, float* out, float* lse) {
  if (gemm_precision() == MathPrecision::kBf16 && cpu::Bf16AttentionTakes(shape)) {
    cpu::AttentionForwardBf16(shape, q, k, v, out, lse);
    return;
  }
  cpu::AttentionForward(shape, q, k, v, out, lse);
}

void CpuBackend::AttentionBackward(const AttentionShape& shape, const float* q, const float* k,
                                   const float* v, const float* out, const float* dout,
                                   const float* lse, float* dq, float* dk, float* dv) {
  if (gemm_precision() == MathPrecision::kBf16 && cpu::Bf16AttentionTakes(shape)) {
    cpu::AttentionBackwardBf16(shape, q, k, v, out, dout, lse, dq, dk, dv);
    return;
  }
  cpu::AttentionBackward(shape, q, k, v, out, dout, lse, dq, dk, dv);
}

void CpuBackend::EmbeddingForward(const int32_t* ids, const float* table, float* out, int64_t n,
                                  int64_t dim) {
  cpu::EmbeddingForward(ids, table, out, n, dim);
}

void CpuBackend::EmbeddingBackward(const int32_t* ids, const float* dout, float* dtable, int64_t n,
                                   int64_t dim) {
  cpu::EmbeddingBackward(ids, dout, dtable, n, dim);
}

void CpuBackend::GatherDotForward(const float* q, const float* rows, const int32_t* slots,
                                  int64_t tokens, int64_t per_token, int64_t dim, float alpha,
                                  float beta, float* out) {
  cpu::GatherDotForward(q, rows, slots, tokens, per_token, dim, alpha, beta, out);
}

void CpuBackend::GatherDotBackward(const float* q, const float* rows, const int32_t* slots,
                                   int64_t tokens, int64_t per_token, int64_t dim, float alpha,
                                   const float* dout, float* dq, float* drows) {
  cpu::GatherDotBackward(q, rows, slots, tokens, per_token, dim, alpha, dout, dq, drows);
}

void CpuBackend::MseForward(const float* pred, const float* target, int64_t n, double* loss) {
  *loss = cpu::MseForward(pred, target, n);
}

void CpuBackend::MseBackward(const float* pred, const float* target, float* dpred, int64_t n,
                             float scale) {
  cpu::MseBackward(pred, target, dpred, n, scale);
}

void CpuBackend::CrossEntropyForward(const float* logits, const int32_t* targets, float* probs,
                                     int64_t rows, int64_t classes, double* loss) {
  *loss = cpu::CrossEntropyForward(logits, targets, probs, rows, classes);
}

void CpuBackend::CrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits,
                                      int64_t rows, int64_t classes, float scale) {
  cpu::CrossEntropyBackward(probs, targets, dlogits, rows, classes, scale);
}

void CpuBackend::VocabCrossEntropyStats(const float* logits, const int32_t* targets, int64_t rows,
                                        int64_t columns, int64_t column_offset, double* stats) {
  cpu::VocabCrossEntropyStats(logits, targets, rows, columns, column_offset, stats);
}

void CpuBackend::VocabCrossEntropyCombine(const float* logits, const double* all_stats,
                                          int64_t ranks, const int32_t* targets, float* probs,
                                          int64_t rows, int64_t columns, double* totals) {
  cpu::VocabCrossEntropyCombine(logits, all_stats, ranks, targets, probs, rows, columns, totals);
}

void CpuBackend::VocabCrossEntropyBackward(const float* probs, const int32_t* targets,
                                           float* dlogits, int64_t rows, int64_t columns,
                                           int64_t column_offset, float scale) {
  cpu::VocabCrossEntropyBackward(probs, targets, dlogits, rows, columns, column_offset, scale);
}

void CpuBackend::LayerNormModulateForward(const float* x, const float* shift, const float* scale,
                                          float* y, float* mean, float* rstd, int64_t batch,
                                          int64_t seq, int64_t dim, int64_t cond_stride,
                                          float eps) {
  cpu::LayerNormModulateForward(x, shift, scale, y, mean, rstd, batch, seq, dim, cond_stride, eps);
}

void CpuBackend::LayerNormModulateBackward(const float* dy, const float* x, const float* mean,
                                           const float* rstd, const float* scale, float* dx,
                                           float* dshift, float* dscale, int64_t batch,
                                           int64_t seq, int64_t dim, int64_t cond_stride) {
  cpu::LayerNormModulateBackward(dy, x, mean, rstd, scale, dx, dshift, dscale, batch, seq, dim,
                                 cond_stride);
}

void CpuBackend::ModulateForward(const float* x, const float* shift, const float* scale, float* y,
                                 int64_t batch, int64_t seq, int64_t dim, int64_t cond_stride) {
  cpu::ModulateForward(x, shift, scale, y, batch, seq, dim, cond_stride);
}

void CpuBackend::ModulateBackward(const float* dy, const float* x, const float* scale, float* dx,
                                  float* dshift, float* dscale, int64_t batch, int64_t seq,
                                  int64_t dim, int64_t cond_stride) {
  cpu::ModulateBackward(dy, x, scale, dx, dshift, dscale, batch, seq, dim, cond_stride);
}

void CpuBackend::GatedResidualForward(float* residual, const float* y, const float* gate,
                                      int64_t batch, int64_t seq, int64_t dim,
                                      int64_t cond_stride) {
  cpu::GatedResidualForward(residual, y, gate, batch, seq, dim, cond_stride);
}

void CpuBackend::GatedResidualBackward(const float* dresidual, const float* y, const float* gate,
                                       float* dy, float* dgate, int64_t batch, int64_t seq,
                                       int64_t dim, int64_t cond_stride) {
  cpu::GatedResidualBackward(dresidual, y, gate, dy, dgate, batch, seq, dim, cond_stride);
}

void CpuBackend::HstuQueryTimestamps(const int64_t* offsets, int64_t users,
                                     const int64_t* timestamps, const int64_t* next_timestamps,
                                     int64_t* query_timestamps) {
  cpu::HstuQueryTimestamps(offsets, users, timestamps, next_timestamps, query_timestamps);
}

void CpuBackend::HstuAttentionForward(const int64_t* offsets, int64_t users, int64_t max_len,
                                      int64_t heads, int64_t qk_dim, int64_t v_dim, const float* q,
                                      const float* k, int64_t qk_stride, const float* v,
                                      int64_t v_stride, const float* pos_bias,
                                      const float* time_bias, int32_t num_buckets,
                                      const int64_t* timestamps, const int64_t* query_timestamps,
                                      float* out) {
  cpu::HstuAttentionForward(offsets, users, max_len, heads, qk_dim, v_dim, q, k, qk_stride, v,
                            v_stride, pos_bias, time_bias, num_buckets, timestamps,
                            query_timestamps, out);
}

void CpuBackend::HstuAttentionBackward(const int64_t* offsets, int64_t users, int64_t max_len,
                                       int64_t heads, int64_t qk_dim, int64_t v_dim,
                                       const float* q, const float* k, int64_t qk_stride,
                                       const float* v, int64_t v_stride, const float* pos_bias,
                                       const float* time_bias, int32_t num_buckets,
                                       const int64_t* timestamps, const int64_t* query_timestamps,
                                       const float* dout, float* dq, float* dk, float* dv,
                                       float* dpos_bias, float* dtime_bias) {
  cpu::HstuAttentionBackward(offsets, users, max_len, heads, qk_dim, v_dim, q, k, qk_stride, v,
                             v_stride, pos_bias, time_bias, num_buckets, timestamps,
                             query_timestamps, dout, dq, dk, dv, dpos_bias, dtime_bias);
}

void CpuBackend::HstuNormGateForward(const float* x, const float* u, int64_t u_stride, float* y,
                                     float* mean, float* rstd, int64_t rows, int64_t dim,
                                     float eps) {
  cpu::HstuNormGateForward(x, u, u_stride, y, mean, rstd, rows, dim, eps);
}

void CpuBackend::HstuNormGateBackward(const float* dy, const float* x, const float* u,
                                      int64_t u_stride, const float* mean, const float* rstd,
                                      float* dx, float* du, int64_t rows, int64_t dim) {
  cpu::HstuNormGateBackward(dy, x, u, u_stride, mean, rstd, dx, du, rows, dim);
}

void CpuBackend::HstuNormGateSums(const float* x, int64_t rows, int64_t dim, const float* mean,
                        float* out) {
  cpu::HstuNormGateSums(x, rows, dim, mean, out);
}

void CpuBackend::HstuNormGateApply(const float* x, const float* u, int64_t u_stride, const float* mean,
                         const float* squares, int64_t count, float eps, float* y, float* rstd,
                         int64_t rows, int64_t dim) {
  cpu::HstuNormGateApply(x, u, u_stride, mean, squares, count, eps, y, rstd, rows, dim);
}

void CpuBackend::HstuNormGateBackwardSums(const float* dy, const float* x, const float* u,
                                int64_t u_stride, const float* mean, const float* rstd,
                                int64_t rows, int64_t dim, float* sums) {
  cpu::HstuNormGateBackwardSums(dy, x, u, u_stride, mean, rstd, rows, dim, sums);
}

void CpuBackend::HstuNormGateBackwardApply(const float* dy, const float* x, const float* u,
                                 int64_t u_stride, const float* mean, const float* rstd,
                                 const float* sums, int64_t count, float* dx, float* du,
                                 int64_t rows, int64_t dim) {
  cpu::HstuNormGateBackwardApply(dy, x, u, u_stride, mean, rstd, sums, count, dx, du, rows, dim);
}

void CpuBackend::TopKForward(const float* probs, int32_t* expert_index, float* weights,
                             int64_t tokens, int64_t experts, int64_t k) {
  cpu::TopKForward(probs, expert_index, weights, tokens, experts, k);
}

void CpuBackend::TopKBackward(const float* dweights, const int32_t* expert_index, float* dprobs,
                              int64_t tokens, int64_t experts, int64_t k) {
  cpu::TopKBackward(dweights, expert_index, dprobs, tokens, experts, k);
}

void CpuBackend::SortByExpert(const int32_t* expert_index, int64_t assignments, int64_t experts,
                              int64_t* expert_offsets, int32_t* row_of_assignment,
                              int32_t* assignment_of_row) {
  cpu::SortByExpert(expert_index, assignments, experts, expert_offsets, row_of_assignment,
                    assignment_of_row);
}

void CpuBackend::PermuteForward(const float* x, const int32_t* assignment_of_row, float* out,
                                int64_t rows, int64_t dim, int64_t k) {
  cpu::PermuteForward(x, assignment_of_row, out, rows, dim, k);
}

void CpuBackend::PermuteBackward(const float* dout, const int32_t* row_of_assignment, float* dx,
                                 int64_t tokens, int64_t dim, int64_t k) {
  cpu::PermuteBackward(dout, row_of_assignment, dx, tokens, dim, k);
}

void CpuBackend::UnpermuteCombineForward(const float* expert_out, const int32_t* row_of_assignment,
                                         const float* weights, float* out, int64_t tokens,
                                         int64_t dim, int64_t k) {
  cpu::UnpermuteCombineForward(expert_out, row_of_assignment, weights, out, tokens, dim, k);
}

void CpuBackend::UnpermuteCombineBackward(const float* dout, const float* expert_out,
                                          const int32_t* row_of_assignment, const float* weights,
                                          float* dexpert_out, float* dweights, int64_t tokens,
                                          int64_t dim, int64_t k) {
  cpu::UnpermuteCombineBackward(dout, expert_out, row_of_assignment, weights, dexpert_out, dweights,
                                tokens, dim, k);
}

void CpuBackend::MoeRoutingStatistics(const int32_t* expert_index, const float* probs,
                                      int64_t tokens, int64_t experts, int64_t k, int64_t* counts,
                                      double* prob_sums) {
  cpu::MoeRoutingStatistics(expert_index, probs, tokens, experts, k, counts, prob_sums);
}

void CpuBackend::MoeBalance(const int64_t* counts, int64_t count_tokens, const double* prob_sums,
                            int64_t prob_tokens, int64_t experts, int64_t k, double coef,
                            double* out) {
  cpu::MoeBalance(counts, count_tokens, prob_sums, prob_tokens, experts, k, coef, out);
}

void CpuBackend::MoeCapacitySlots(const int32_t* chosen, int64_t assignments, int64_t experts,
                                  int64_t capacity, int32_t* expert_index,
                                  int32_t* row_of_assignment, int32_t* assignment_of_row,
                                  int64_t* dropped) {
  cpu::MoeCapacitySlots(chosen, assignments, experts, capacity, expert_index, row_of_assignment,
                        assignment_of_row, dropped);
}

void CpuBackend::MoeRenormalizeForward(const float* raw, float* weights, int64_t tokens,
                                       int64_t k) {
  cpu::MoeRenormalizeForward(raw, weights, tokens, k);
}

void CpuBackend::MoeRenormalizeBackward(const float* raw, const float* weights, float* dweights,
                                        int64_t tokens, int64_t k) {
  cpu::MoeRenormalizeBackward(raw, weights, dweights, tokens, k);
}

void CpuBackend::MoeBalanceGradient(const double* f, double scale, double divisor,
                                    float* dprobs, int64_t tokens, int64_t experts) {
  cpu::MoeBalanceGradient(f, scale, divisor, dprobs, tokens, experts);
}

void CpuBackend::SsdScanForward(const SsdShape& shape, const float* x, const float* dt,
                                const float* A, const float* B, const float* C, const float* D,
                                const float* initial_state, float* y, float* final_state) {
  cpu::SsdScanForward(shape, x, dt, A, B, C, D, initial_state, y, final_state);
}

void CpuBackend::SsdScanBackward(const SsdShape& shape, const float* x, const float* dt,
                                 const float* A, const float* B, const float* C, const float* D,
                                 const float* initial_state, const float* dy,
                                 const float* d_final_state, float* dx, float* ddt, float* dA,
                                 float* dB, float* dC, float* dD, float* d_initial_state) {
  cpu::SsdScanBackward(shape, x, dt, A, B, C, D, initial_state, dy, d_final_state, dx, ddt, dA,
                       dB, dC, dD, d_initial_state);
}

void CpuBackend::SsdStep(const SsdShape& shape, const float* x, const float* dt, const float* A,
                         const float* B, const float* C, const float* D, float* state, float* y) {
  cpu::SsdStep(shape, x, dt, A, B, C, D, state, y);
}

void CpuBackend::CausalConv1dForward(const CausalConv1dShape& shape, const float* x,
                                     const float* weight, const float* bias, const float* halo,
                                     float* y, float* halo_out) {
  cpu::CausalConv1dForward(shape, x, weight, bias, halo, y, halo_out);
}

void CpuBackend::CausalConv1dBackward(const CausalConv1dShape& shape, const float* x,
                                      const float* weight, const float* halo, const float* dy,
                                      float* dx, float* dweight, float* dbias, float* dhalo) {
  cpu::CausalConv1dBackward(shape, x, weight, halo, dy, dx, dweight, dbias, dhalo);
}

void CpuBackend::CausalConv1dStep(const CausalConv1dShape& shape, const float* x,
                                  const float* weight, const float* bias, float* state, float* y) {
  cpu::CausalConv1dStep(shape, x, weight, bias, state, y);
}

void CpuBackend::DtSoftplusForward(const float* dt_raw, int64_t raw_stride, const float* bias,
                                   float* dt, int64_t rows, int64_t heads) {
  cpu::DtSoftplusForward(dt_raw, raw_stride, bias, dt, rows, heads);
}

void CpuBackend::DtSoftplusBackward(const float* ddt, const float* dt_raw, int64_t raw_stride,
                                    const float* bias, float* ddt_raw, float* dbias,
                                    int64_t rows, int64_t heads) {
  cpu::DtSoftplusBackward(ddt, dt_raw, raw_stride, bias, ddt_raw, dbias, rows, heads);
}

void CpuBackend::GatedRmsNormForward(const float* x, const float* z, int64_t z_stride,
                                     const float* weight, float* y, float* rstd, int64_t rows,
                                     int64_t dim, int64_t group_size, float eps) {
  cpu::GatedRmsNormForward(x, z, z_stride, weight, y, rstd, rows, dim, group_size, eps);
}

void CpuBackend::GatedRmsNormBackward(const float* dy, const float* x, const float* z,
                                      int64_t z_stride, const float* weight, const float* rstd,
                                      float* dx, float* dz, float* dweight, int64_t rows,
                                      int64_t dim, int64_t group_size) {
  cpu::GatedRmsNormBackward(dy, x, z, z_stride, weight, rstd, dx, dz, dweight, rows, dim,
                            group_size);
}

void CpuBackend::SsmDecayRatesForward(const float* a_log, float* a, int64_t heads) {
  cpu::SsmDecayRatesForward(a_log, a, heads);
}

void CpuBackend::SsmDecayRatesBackward(const float* da, const float* a, float* da_log,
                                       int64_t heads) {
  cpu::SsmDecayRatesBackward(da, a, da_log, heads);
}

void CpuBackend::SsdShardDecay(const float* dt, const float* A, float* decay, int64_t batch,
                               int64_t seq, int64_t heads) {
  cpu::SsdShardDecay(dt, A, decay, batch, seq, heads);
}

void CpuBackend::AdamWUpdate(const AdamWScalars& scalars, std::span<const AdamWSegment> segments,
                             float* params, const float* grads, float* m, float* v,
                             const float* grad_scale) {
  const float scale = grad_scale != nullptr ? *grad_scale : 1.0f;
  if (scale == 0.0f) return;  // StepGuard skipped the step
  cpu::AdamWUpdate(scalars, segments, params, grads, m, v, scale);
}

void CpuBackend::EmaUpdate(float* ema, const float* params, int64_t n, float blend,
                           const float* guard) {
  if (guard != nullptr && *guard == 0.0f) return;
  cpu::EmaUpdate(ema, params, n, blend);
}

void CpuBackend::SparseRowUpdate(const SparseRowScalars& scalars, const int32_t* rows,
                                 int64_t count, int64_t dim, const float* grads, float* params,
                                 float* m, float* v, float* sums) {
  cpu::SparseRowUpdate(scalars, rows, count, dim, grads, params, m, v, sums);
}

void CpuBackend::CounterDropoutMask(const int64_t* row_keys, int64_t rows, int64_t width,
                                    uint64_t key, float rate, float* mask) {
  cpu::CounterDropoutMask(row_keys, rows, width, key, rate, mask);
}

void SetHostThreads(int threads) { cpu::SetNumThreads(threads); }
int HostThreads() { return cpu::NumThreads(); }

Backend& HostBackend() {
  static CpuBackend* backend = new CpuBackend();  // never destroyed: used until exit
  return *backend;
}

}  // namespace tessera
