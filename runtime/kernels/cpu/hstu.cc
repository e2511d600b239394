// HSTU jagged pointwise attention on the CPU.
//
// Work is cut by users, never by a padded batch: the forward pass runs one
// task per (user, block of 64 queries), the backward pass one task per user.
// In a task the relative bias of the block (and its time buckets) is made
// once and shared by all heads; per head the block's scores are one oneDNN
// sgemm over the user's visible keys [0, q0 + bq), then SiLU / max_len with
// the causal mask in one vectorized pass, then one sgemm against V.
//
// Backward, per user, head and query block R (keys 0 .. end of R):
//   S = Q_R K^T + rab,  A = SiLU(S) / n,  dA = dO_R V^T,
//   dS = dA * SiLU'(S) / n,  SiLU'(s) = sig(s) (1 + s (1 - sig(s))),
//   dV += A^T dO_R,  dK += dS^T Q_R,  dQ_R = dS K,  drab += sum_h dS.
// One thread owns a whole user, so dK/dV sums are made in one order; the
// bias gradients go to per-user partials summed in user order afterwards.
#include "runtime/kernels/cpu/hstu.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "runtime/kernels/cpu/gemm.h"
#include "runtime/kernels/cpu/parallel_loops.h"
#include "runtime/kernels/cpu/vector_math.h"

namespace tessera::cpu {
namespace {

constexpr int64_t kQueryBlock = 64;

float* Scratch(std::vector<float>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}
int32_t* Scratch(std::vector<int32_t>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

// Everything a block needs to know about the batch.
struct Batch {
  const int64_t* offsets;
  int64_t max_len, heads, qk_dim, v_dim;
  const float *q, *k;
  int64_t qk_stride;
  const float* v;
  int64_t v_stride;
  const float *pos_bias, *time_bias;
  int32_t num_buckets;
  const int64_t *timestamps, *query_timestamps;
  bool has_bias() const { return pos_bias != nullptr || time_bias != nullptr; }
};

// rab[r, j] (row pitch `ld`) for the queries [q0, q0 + bq) of the user whose
// first token is `begin`, keys j <= q0 + r; bucket[r, j] the time buckets
// (when there is a time bias). Keys past the diagonal are left unwritten.
void BiasBlock(const Batch& b, int64_t begin, int64_t q0, int64_t bq, int64_t ld, float* rab,
               int32_t* bucket) {
  for (int64_t r = 0; r < bq; ++r) {
    const int64_t i = q0 + r;
    const int64_t visible = i + 1;
    float* row = rab + r * ld;
    if (b.pos_bias != nullptr) {
      const float* diagonal = b.pos_bias + (b.max_len - 1 - i);  // index of key j is j - i + n - 1
#pragma omp simd
      for (int64_t j = 0; j < visible; ++j) row[j] = diagonal[j];
    } else {
      std::fill(row, row + visible, 0.0f);
    }
    if (b.time_bias != nullptr) {
      int32_t* bucket_row = bucket + r * ld;
      const int64_t query_time = b.query_timestamps[begin + i];
      const int64_t* key_time = b.timestamps + begin;
      for (int64_t j = 0; j < visible; ++j) {
        bucket_row[j] = HstuTimeBucket(query_time - key_time[j], b.num_buckets);
        row[j] += b.time_bias[bucket_row[j]];
      }
    }
  }
}

// scores [bq, ld] = Q_R K^T for head h of the user at `begin`.
void Scores(const Batch& b, int64_t begin, int64_t h, int64_t q0, int64_t bq, int64_t ld,
            float* scores) {
  const float* q_blk = b.q + (begin + q0) * b.qk_stride + h * b.qk_dim;
  const float* k_user = b.k + begin * b.qk_stride + h * b.qk_dim;
  Gemm(false, true, bq, ld, b.qk_dim, 1.0f, q_blk, b.qk_stride, k_user, b.qk_stride, 0.0f, scores,
       ld);
}

void ForwardBlock(const Batch& b, int64_t begin, int64_t q0, int64_t bq, float* out, float* rab,
                  int32_t* bucket, float* scores) {
  const int64_t ld = q0 + bq;  // keys visible to the block
  const float inv_n = 1.0f / static_cast<float>(b.max_len);
  const int64_t out_stride = b.heads * b.v_dim;
  if (b.has_bias()) BiasBlock(b, begin, q0, bq, ld, rab, bucket);
  for (int64_t h = 0; h < b.heads; ++h) {
    Scores(b, begin, h, q0, bq, ld, scores);
    for (int64_t r = 0; r < bq; ++r) {
      float* s = scores + r * ld;
      const int64_t visible = q0 + r + 1;
      if (b.has_bias()) {
        const float* bias = rab + r * ld;
#pragma omp simd
        for (int64_t j = 0; j < visible; ++j) s[j] += bias[j];
      }
#pragma omp simd
      for (int64_t j = 0; j < visible; ++j) s[j] = s[j] * FastSigmoid(s[j]) * inv_n;
      std::fill(s + visible, s + ld, 0.0f);
    }
    // out_R [bq, v_dim] = A [bq, ld] V [ld, v_dim]
    Gemm(false, false, bq, b.v_dim, ld, 1.0f, scores, ld, b.v + begin * b.v_stride + h * b.v_dim,
         b.v_stride, 0.0f, out + (begin + q0) * out_stride + h * b.v_dim, out_stride);
  }
}

// The whole backward pass of one user of length `len` at `begin`. dpos_user
// [max_len] and dtime_user [num_buckets + 1] receive this user's bias
// gradients (overwritten).
void BackwardUser(const Batch& b, int64_t begin, int64_t len, const float* dout, float* dq,
                  float* dk, float* dv, float* dpos_user, float* dtime_user, float* rab,
                  int32_t* bucket, float* dbias, float* scores, float* dscores) {
  const float inv_n = 1.0f / static_cast<float>(b.max_len);
  const int64_t out_stride = b.heads * b.v_dim;
  for (int64_t t = begin; t < begin + len; ++t) {
    for (int64_t h = 0; h < b.heads; ++h) {
      std::fill_n(dq + t * b.qk_stride + h * b.qk_dim, b.qk_dim, 0.0f);
      std::fill_n(dk + t * b.qk_stride + h * b.qk_dim, b.qk_dim, 0.0f);
      std::fill_n(dv + t * b.v_stride + h * b.v_dim, b.v_dim, 0.0f);
    }
  }
  if (dpos_user != nullptr) std::fill_n(dpos_user, b.max_len, 0.0f);
  if (dtime_user != nullptr) std::fill_n(dtime_user, b.num_buckets + 1, 0.0f);
  const bool want_dbias = dpos_user != nullptr || dtime_user != nullptr;

  for (int64_t q0 = 0; q0 < len; q0 += kQueryBlock) {
    const int64_t bq = std::min(kQueryBlock, len - q0);
    const int64_t ld = q0 + bq;
    if (b.has_bias()) BiasBlock(b, begin, q0, bq, ld, rab, bucket);
    if (want_dbias) std::fill_n(dbias, bq * ld, 0.0f);
    const float* dout_blk = dout + (begin + q0) * out_stride;
    for (int64_t h = 0; h < b.heads; ++h) {
      const float* q_blk = b.q + (begin + q0) * b.qk_stride + h * b.qk_dim;
      const float* k_user = b.k + begin * b.qk_stride + h * b.qk_dim;
      const float* v_user = b.v + begin * b.v_stride + h * b.v_dim;
      Scores(b, begin, h, q0, bq, ld, scores);
      // dscores [bq, ld] = dO_R V^T
      Gemm(false, true, bq, ld, b.v_dim, 1.0f, dout_blk + h * b.v_dim, out_stride, v_user,
           b.v_stride, 0.0f, dscores, ld);
      for (int64_t r = 0; r < bq; ++r) {
        float* s = scores + r * ld;
        float* ds = dscores + r * ld;
        const int64_t visible = q0 + r + 1;
        if (b.has_bias()) {
          const float* bias = rab + r * ld;
#pragma omp simd
          for (int64_t j = 0; j < visible; ++j) s[j] += bias[j];
        }
#pragma omp simd
        for (int64_t j = 0; j < visible; ++j) {
          const float x = s[j];
          const float sig = FastSigmoid(x);
          s[j] = x * sig * inv_n;
          ds[j] = ds[j] * sig * (1.0f + x * (1.0f - sig)) * inv_n;
        }
        std::fill(s + visible, s + ld, 0.0f);
        std::fill(ds + visible, ds + ld, 0.0f);
        if (want_dbias) {
          float* db = dbias + r * ld;
#pragma omp simd
          for (int64_t j = 0; j < visible; ++j) db[j] += ds[j];
        }
      }
      float* dq_blk = dq + (begin + q0) * b.qk_stride + h * b.qk_dim;
      float* dk_user = dk + begin * b.qk_stride + h * b.qk_dim;
      float* dv_user = dv + begin * b.v_stride + h * b.v_dim;
      // dV [ld, v_dim] += A^T dO_R;  dK [ld, qk_dim] += dS^T Q_R;  dQ_R = dS K
      Gemm(true, false, ld, b.v_dim, bq, 1.0f, scores, ld, dout_blk + h * b.v_dim, out_stride,
           1.0f, dv_user, b.v_stride);
      Gemm(true, false, ld, b.qk_dim, bq, 1.0f, dscores, ld, q_blk, b.qk_stride, 1.0f, dk_user,
           b.qk_stride);
      Gemm(false, false, bq, b.qk_dim, ld, 1.0f, dscores, ld, k_user, b.qk_stride, 0.0f, dq_blk,
           b.qk_stride);
    }
    for (int64_t r = 0; want_dbias && r < bq; ++r) {
      const int64_t i = q0 + r;
      const float* db = dbias + r * ld;
      if (dpos_user != nullptr) {
        float* diagonal = dpos_user + (b.max_len - 1 - i);
#pragma omp simd
        for (int64_t j = 0; j <= i; ++j) diagonal[j] += db[j];
      }
      if (dtime_user != nullptr) {
        const int32_t* bucket_row = bucket + r * ld;
        for (int64_t j = 0; j <= i; ++j) dtime_user[bucket_row[j]] += db[j];
      }
    }
  }
}

}  // namespace

int32_t HstuTimeBucket(int64_t delta_t, int32_t num_buckets) {
  // |dt| without overflow at INT64_MIN, then the reference's
  // (log(float(max(|dt|, 1))) / 0.301).long() in float32.
  const uint64_t magnitude = delta_t < 0 ? uint64_t{0} - static_cast<uint64_t>(delta_t)
                                         : static_cast<uint64_t>(delta_t);
  const float x = static_cast<float>(std::max<uint64_t>(magnitude, 1));
  const float bucket = std::log(x) / 0.301f;
  return static_cast<int32_t>(std::min<float>(bucket, static_cast<float>(num_buckets)));
}

void HstuQueryTimestamps(const int64_t* offsets, int64_t users, const int64_t* timestamps,
                         const int64_t* next_timestamps, int64_t* query_timestamps) {
  for (int64_t u = 0; u < users; ++u) {
    const int64_t begin = offsets[u], end = offsets[u + 1];
    if (end == begin) continue;
    for (int64_t t = begin; t + 1 < end; ++t) query_timestamps[t] = timestamps[t + 1];
    query_timestamps[end - 1] =
        next_timestamps != nullptr ? next_timestamps[u] : timestamps[end - 1];
  }
}

void HstuAttentionForward(const int64_t* offsets, int64_t users, int64_t max_len, int64_t heads,
                          int64_t qk_dim, int64_t v_dim, const float* q, const float* k,
                          int64_t qk_stride, const float* v, int64_t v_stride,
                          const float* pos_bias, const float* time_bias, int32_t num_buckets,
                          const int64_t* timestamps, const int64_t* query_timestamps, float* out) {
  const Batch b{offsets,  max_len,  heads,    qk_dim,      v_dim,      q,
                k,        qk_stride, v,       v_stride,    pos_bias,   time_bias,
                num_buckets, timestamps, query_timestamps};
  // One task per (user, query block); a long user still fills every core.
  thread_local std::vector<std::pair<int64_t, int64_t>> tasks;
  tasks.clear();
  int64_t work = 0;
  for (int64_t u = 0; u < users; ++u) {
    const int64_t len = offsets[u + 1] - offsets[u];
    for (int64_t q0 = 0; q0 < len; q0 += kQueryBlock) tasks.emplace_back(u, q0);
    work += len * len * heads * (qk_dim + v_dim) / 2;
  }
  const int64_t task_count = static_cast<int64_t>(tasks.size());
  const auto* task_list = tasks.data();
#pragma omp parallel if (ShouldParallelize(work) && task_count > 1)
  {
    thread_local std::vector<float> rab_buffer, scores_buffer;
    thread_local std::vector<int32_t> bucket_buffer;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < task_count; ++task) {
      const auto [u, q0] = task_list[task];
      const int64_t begin = offsets[u];
      const int64_t bq = std::min(kQueryBlock, offsets[u + 1] - begin - q0);
      const int64_t block = bq * (q0 + bq);
      float* rab = b.has_bias() ? Scratch(rab_buffer, block) : nullptr;
      int32_t* bucket = time_bias != nullptr ? Scratch(bucket_buffer, block) : nullptr;
      ForwardBlock(b, begin, q0, bq, out, rab, bucket, Scratch(scores_buffer, block));
    }
  }
}

void HstuAttentionBackward(const int64_t* offsets, int64_t users, int64_t max_len, int64_t heads,
                           int64_t qk_dim, int64_t v_dim, const float* q, const float* k,
                           int64_t qk_stride, const float* v, int64_t v_stride,
                           const float* pos_bias, const float* time_bias, int32_t num_buckets,
                           const int64_t* timestamps, const int64_t* query_timestamps,
                           const float* dout, float* dq, float* dk, float* dv, float* dpos_bias,
                           float* dtime_bias) {
  const Batch b{offsets,  max_len,  heads,    qk_dim,      v_dim,      q,
                k,        qk_stride, v,       v_stride,    pos_bias,   time_bias,
                num_buckets, timestamps, query_timestamps};
  float* const dpos = pos_bias != nullptr ? dpos_bias : nullptr;
  float* const dtime = time_bias != nullptr ? dtime_bias : nullptr;
  // Per-user partial bias gradients: [users, max_len] then [users, buckets + 1].
  const int64_t pos_width = dpos != nullptr ? max_len : 0;
  const int64_t time_width = dtime != nullptr ? num_buckets + 1 : 0;
  thread_local std::vector<float> partials_buffer;
  float* partials = Scratch(partials_buffer, users * (pos_width + time_width));
  int64_t work = 0;
  for (int64_t u = 0; u < users; ++u) {
    const int64_t len = offsets[u + 1] - offsets[u];
    work += len * len * heads * (qk_dim + v_dim);
  }
#pragma omp parallel if (ShouldParallelize(work) && users > 1)
  {
    thread_local std::vector<float> rab_buffer, dbias_buffer, scores_buffer, dscores_buffer;
    thread_local std::vector<int32_t> bucket_buffer;
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < users; ++u) {
      const int64_t begin = offsets[u];
      const int64_t len = offsets[u + 1] - begin;
      const int64_t block = std::min(kQueryBlock, len) * len;
      float* dpos_user = dpos != nullptr ? partials + u * pos_width : nullptr;
      float* dtime_user = dtime != nullptr ? partials + users * pos_width + u * time_width : nullptr;
      if (len == 0) {
        if (dpos_user != nullptr) std::fill_n(dpos_user, pos_width, 0.0f);
        if (dtime_user != nullptr) std::fill_n(dtime_user, time_width, 0.0f);
        continue;
      }
      BackwardUser(b, begin, len, dout, dq, dk, dv, dpos_user, dtime_user,
                   b.has_bias() ? Scratch(rab_buffer, block) : nullptr,
                   time_bias != nullptr ? Scratch(bucket_buffer, block) : nullptr,
                   Scratch(dbias_buffer, block), Scratch(scores_buffer, block),
                   Scratch(dscores_buffer, block));
    }
  }
  // Sum the partials in user order: the same sums for any thread count.
  for (int64_t u = 0; u < users; ++u) {
    if (dpos != nullptr) {
      const float* p = partials + u * pos_width;
#pragma omp simd
      for (int64_t i = 0; i < max_len; ++i) dpos[i] += p[i];
    }
    if (dtime != nullptr) {
      const float* p = partials + users * pos_width + u * time_width;
#pragma omp simd
      for (int64_t i = 0; i < time_width; ++i) dtime[i] += p[i];
    }
  }
}

namespace {

// One row of the norm-gate (x, u, y, dy, dx, du: that row's columns).
float RowSum(const float* x, int64_t dim) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < dim; ++c) sum += x[c];
  return sum;
}

float CenteredSquares(const float* x, float mu, int64_t dim) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < dim; ++c) sum += (x[c] - mu) * (x[c] - mu);
  return sum;
}

void GateRow(const float* x, const float* u, float mu, float rs, float* y, int64_t dim) {
#pragma omp simd
  for (int64_t c = 0; c < dim; ++c) y[c] = u[c] * ((x[c] - mu) * rs);
}

// g = dy * u reaches LayerNorm(x) = xhat: sums of g and g * xhat.
void GradientSums(const float* dy, const float* x, const float* u, float mu, float rs, int64_t dim,
                  float* sum_g, float* sum_g_xhat) {
  float sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
  for (int64_t c = 0; c < dim; ++c) {
    const float g = dy[c] * u[c];
    sg += g;
    sgx += g * ((x[c] - mu) * rs);
  }
  *sum_g = sg;
  *sum_g_xhat = sgx;
}

void GradientRow(const float* dy, const float* x, const float* u, float mu, float rs,
                 float mean_g, float mean_g_xhat, float* dx, float* du, int64_t dim) {
#pragma omp simd
  for (int64_t c = 0; c < dim; ++c) {
    const float xhat = (x[c] - mu) * rs;
    du[c] = dy[c] * xhat;
    dx[c] = rs * (dy[c] * u[c] - mean_g - xhat * mean_g_xhat);
  }
}

}  // namespace

void HstuNormGateForward(const float* x, const float* u, int64_t u_stride, float* y, float* mean,
                         float* rstd, int64_t rows, int64_t dim, float eps) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    const float mu = RowSum(xr, dim) / static_cast<float>(dim);
    const float var = CenteredSquares(xr, mu, dim);
    const float rs = 1.0f / std::sqrt(var / static_cast<float>(dim) + eps);
    GateRow(xr, u + r * u_stride, mu, rs, y + r * dim, dim);
    mean[r] = mu;
    rstd[r] = rs;
  }
}

void HstuNormGateBackward(const float* dy, const float* x, const float* u, int64_t u_stride,
                          const float* mean, const float* rstd, float* dx, float* du, int64_t rows,
                          int64_t dim) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* dyr = dy + r * dim;
    const float* xr = x + r * dim;
    const float* ur = u + r * u_stride;
    const float mu = mean[r], rs = rstd[r];
    float sum_g = 0.0f, sum_g_xhat = 0.0f;
    GradientSums(dyr, xr, ur, mu, rs, dim, &sum_g, &sum_g_xhat);
    GradientRow(dyr, xr, ur, mu, rs, sum_g / static_cast<float>(dim),
                sum_g_xhat / static_cast<float>(dim), dx + r * dim, du + r * u_stride, dim);
  }
}

void HstuNormGateSums(const float* x, int64_t rows, int64_t dim, const float* mean, float* out) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    out[r] = mean == nullptr ? RowSum(x + r * dim, dim) : CenteredSquares(x + r * dim, mean[r], dim);
  }
}

void HstuNormGateApply(const float* x, const float* u, int64_t u_stride, const float* mean,
                       const float* squares, int64_t count, float eps, float* y, float* rstd,
                       int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float rs = 1.0f / std::sqrt(squares[r] / static_cast<float>(count) + eps);
    GateRow(x + r * dim, u + r * u_stride, mean[r], rs, y + r * dim, dim);
    rstd[r] = rs;
  }
}

void HstuNormGateBackwardSums(const float* dy, const float* x, const float* u, int64_t u_stride,
                              const float* mean, const float* rstd, int64_t rows, int64_t dim,
                              float* sums) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    GradientSums(dy + r * dim, x + r * dim, u + r * u_stride, mean[r], rstd[r], dim,
                 &sums[2 * r], &sums[2 * r + 1]);
  }
}

void HstuNormGateBackwardApply(const float* dy, const float* x, const float* u, int64_t u_stride,
                               const float* mean, const float* rstd, const float* sums,
                               int64_t count, float* dx, float* du, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    GradientRow(dy + r * dim, x + r * dim, u + r * u_stride, mean[r], rstd[r],
                sums[2 * r] / static_cast<float>(count), sums[2 * r + 1] / static_cast<float>(count),
                dx + r * dim, du + r * u_stride, dim);
  }
}

}  // namespace tessera::cpu
