// HSTU pointwise attention on jagged batches ("Actions Speak Louder than
// Words", Meta 2024; reference: facebookresearch/generative-recommenders,
// research/modeling/sequential/hstu.py). docs/hstu.md has the derivation and
// where we follow the reference.
//
// Jagged layout: a batch is U users' sequences concatenated; user u owns the
// tokens [offsets[u], offsets[u+1]) (offsets: [U+1], offsets[0] = 0,
// non-decreasing, every length <= max_len; a user may have length 0). Q, K
// are [total, H, qk_dim] and V, U are [total, H, v_dim], token-major: token t's
// row starts at t * stride, head h at column h * dim, so they may point into
// one fused [total, U | V | Q | K] projection (stride = its width) or be
// separate arrays (stride = H * dim).
//
// Per user and head, for query i and key j <= i (both within the user):
//   s_ij = q_i . k_j + rab_ij
//   a_ij = SiLU(s_ij) / max_len                        (no softmax)
//   out_i = sum_{j <= i} a_ij v_j
// rab_ij = pos_bias[max_len - 1 + j - i]                (Toeplitz, [2 max_len - 1])
//        + time_bias[TimeBucket(query_time_i - time_j)] ([num_buckets + 1])
// shared across heads. pos_bias / time_bias may each be null (no such term);
// timestamps are read only with time_bias. Under causality only
// pos_bias[0, max_len) is ever read; the rest exists for the reference's
// parameter shape. Nothing is computed for padding: there is none.
//
// Conventions (as every kernel in kernels/cpu): gradients of inputs are
// OVERWRITTEN, gradients of parameters ACCUMULATE (+=). Parameter gradients
// are summed per user in a fixed order and then over users in user order,
// so they are bit-identical for any thread count.
#pragma once

#include <cstdint>

namespace tessera::cpu {

// The reference's bucket of a time difference (seconds):
//   floor(log(max(|dt|, 1)) / 0.301) clamped to [0, num_buckets],
// computed as the reference does (float32 log of |dt| as a float32).
int32_t HstuTimeBucket(int64_t delta_t, int32_t num_buckets);

// The time each query measures from: the NEXT item's timestamp (the
// reference's "ts(next item) - ts(current item)"). For token i of user u,
// query_timestamps[i] = timestamps[i + 1] when i + 1 is still u's; the user's
// last token takes next_timestamps[u] (the reference scatters the target
// item's timestamp there), or its own timestamp when next_timestamps is null
// (what the reference does for a sequence that fills max_len).
void HstuQueryTimestamps(const int64_t* offsets, int64_t users, const int64_t* timestamps,
                         const int64_t* next_timestamps, int64_t* query_timestamps);

// out: [total, H * v_dim] contiguous. Nothing else is saved: the backward
// pass recomputes the scores.
void HstuAttentionForward(const int64_t* offsets, int64_t users, int64_t max_len, int64_t heads,
                          int64_t qk_dim, int64_t v_dim, const float* q, const float* k,
                          int64_t qk_stride, const float* v, int64_t v_stride,
                          const float* pos_bias, const float* time_bias, int32_t num_buckets,
                          const int64_t* timestamps, const int64_t* query_timestamps, float* out);

// dout: [total, H * v_dim] contiguous. dq, dk (qk_stride) and dv (v_stride):
// the head columns of every token OVERWRITTEN. dpos_bias [2 max_len - 1] and
// dtime_bias [num_buckets + 1] ACCUMULATE; each may be null when its bias was.
void HstuAttentionBackward(const int64_t* offsets, int64_t users, int64_t max_len, int64_t heads,
                           int64_t qk_dim, int64_t v_dim, const float* q, const float* k,
                           int64_t qk_stride, const float* v, int64_t v_stride,
                           const float* pos_bias, const float* time_bias, int32_t num_buckets,
                           const int64_t* timestamps, const int64_t* query_timestamps,
                           const float* dout, float* dq, float* dk, float* dv, float* dpos_bias,
                           float* dtime_bias);

// The gate after attention: y = u * LayerNorm(x) over rows of `dim` (no
// affine, as the reference's _norm_attn_output). x, y: [rows, dim]
// contiguous; u: rows `u_stride` apart (a view into the fused projection).
// mean, rstd: [rows], saved for backward.
void HstuNormGateForward(const float* x, const float* u, int64_t u_stride, float* y, float* mean,
                         float* rstd, int64_t rows, int64_t dim, float eps);
// dx [rows, dim] and du (rows u_stride apart) OVERWRITTEN.
void HstuNormGateBackward(const float* dy, const float* x, const float* u, int64_t u_stride,
                          const float* mean, const float* rstd, float* dx, float* du, int64_t rows,
                          int64_t dim);

// The same norm-gate when each row's columns are split over ranks (tensor
// parallelism over heads): this rank holds `dim` of the row's `count`
// columns, and the row statistics are sums over every rank's columns (the
// caller all-reduces them between the calls):
//   HstuNormGateSums(x, mean = null)   out[r] = sum of x[r]      -> mean = sum / count
//   HstuNormGateSums(x, mean)          out[r] = sum of (x[r] - mean[r])^2
//   HstuNormGateApply                  rstd = 1 / sqrt(squares / count + eps), y as above
//   HstuNormGateBackwardSums           sums[r] = (sum g, sum g xhat), g = dy u
//   HstuNormGateBackwardApply          dx, du OVERWRITTEN, from the summed sums
// With one rank (count = dim) they compute what HstuNormGateForward and
// HstuNormGateBackward do, with the same per-row arithmetic.
void HstuNormGateSums(const float* x, int64_t rows, int64_t dim, const float* mean, float* out);
void HstuNormGateApply(const float* x, const float* u, int64_t u_stride, const float* mean,
                       const float* squares, int64_t count, float eps, float* y, float* rstd,
                       int64_t rows, int64_t dim);
void HstuNormGateBackwardSums(const float* dy, const float* x, const float* u, int64_t u_stride,
                              const float* mean, const float* rstd, int64_t rows, int64_t dim,
                              float* sums);
void HstuNormGateBackwardApply(const float* dy, const float* x, const float* u, int64_t u_stride,
                               const float* mean, const float* rstd, const float* sums,
                               int64_t count, float* dx, float* du, int64_t rows, int64_t dim);

}  // namespace tessera::cpu
