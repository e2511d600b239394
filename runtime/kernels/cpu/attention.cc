// FlashAttention-2 on the CPU: per (batch, head), query blocks x key blocks,
// every block product a oneDNN sgemm on the strided rows of one head.
//
// Forward: online softmax over key blocks. The output block itself is the
// accumulator (its rows are rescaled when a later key block raises the row
// maximum), so the only scratch is one block of scores per thread.
// Backward: probabilities recomputed from the saved log-sum-exp,
//   D_i = rowsum(dO_i * O_i),  dS = P * (dP - D),
//   dQ += scale dS K,  dK += scale dS^T Q,  dV += P^T dO,
// accumulated straight into dq/dk/dv: one thread owns a whole (batch, head),
// so every sum is made in the same order on every run (no atomics).
#include "runtime/kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "runtime/kernels/cpu/gemm.h"
#include "runtime/kernels/cpu/vector_math.h"

namespace tessera::cpu {
namespace {

// Block sizes. A query block of 64 rows and a key block of 256 keys keep one
// score block (64 KiB) plus the head's Q/K/V blocks in L2, and at DiT's
// sequence lengths (<= 256) the whole key range is one block, so the forward
// pass never rescales.
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 256;

// Per-thread scratch, grown on first use and then reused, so a steady-state
// call allocates nothing.
float* Scratch(std::vector<float>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

// Keys of block [k0, k0 + bk) that query `query` may see.
inline int64_t VisibleKeys(bool causal, int64_t query, int64_t k0, int64_t bk) {
  if (!causal) return bk;
  return std::clamp<int64_t>(query - k0 + 1, 0, bk);
}

// Where the rows of head h of batch b start in a token-major tensor.
inline int64_t HeadOffset(const AttentionShape& s, int64_t b, int64_t h, int64_t row_stride) {
  return b * s.seq * row_stride + h * s.head_dim;
}

// One query block of one (batch, head): out rows [q0, q0 + bq) and their lse.
void ForwardQueryBlock(const AttentionShape& s, const float* q, const float* k, const float* v,
                       float* out, float* lse, int64_t q0, int64_t bq, float* scores,
                       float* row_max, float* row_sum) {
  const int64_t rs = s.row_stride;
  const int64_t out_stride = s.heads * s.head_dim;
  const int64_t dh = s.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  const float* q_blk = q + q0 * rs;
  float* out_blk = out + q0 * out_stride;
  const int64_t key_end = s.causal ? q0 + bq : s.seq;
  std::fill(row_max, row_max + bq, -std::numeric_limits<float>::infinity());
  std::fill(row_sum, row_sum + bq, 0.0f);

  for (int64_t k0 = 0; k0 < key_end; k0 += kKeyBlock) {
    const int64_t bk = std::min(kKeyBlock, key_end - k0);
    // scores [bq, bk] = scale * Q_blk K_blk^T
    Gemm(false, true, bq, bk, dh, scale, q_blk, rs, k + k0 * rs, rs, 0.0f, scores, bk);
    for (int64_t i = 0; i < bq; ++i) {
      float* row = scores + i * bk;
      const int64_t visible = VisibleKeys(s.causal, q0 + i, k0, bk);
      float block_max = row_max[i];
#pragma omp simd reduction(max : block_max)
      for (int64_t j = 0; j < visible; ++j) block_max = row[j] > block_max ? row[j] : block_max;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < visible; ++j) {
        row[j] = FastExp(row[j] - block_max);
        sum += row[j];
      }
      std::fill(row + visible, row + bk, 0.0f);
      // The first key block sees key 0, so row_max is finite from then on.
      const float correction = k0 == 0 ? 0.0f : std::exp(row_max[i] - block_max);
      row_sum[i] = row_sum[i] * correction + sum;
      row_max[i] = block_max;
      if (k0 > 0 && correction != 1.0f) {
        float* o = out_blk + i * out_stride;
#pragma omp simd
        for (int64_t d = 0; d < dh; ++d) o[d] *= correction;
      }
    }
    // out_blk [bq, dh] (+)= P [bq, bk] V_blk [bk, dh]
    Gemm(false, false, bq, dh, bk, 1.0f, scores, bk, v + k0 * rs, rs, k0 == 0 ? 0.0f : 1.0f,
         out_blk, out_stride);
  }
  for (int64_t i = 0; i < bq; ++i) {
    const float inv = 1.0f / row_sum[i];
    float* o = out_blk + i * out_stride;
#pragma omp simd
    for (int64_t d = 0; d < dh; ++d) o[d] *= inv;
    lse[q0 + i] = row_max[i] + std::log(row_sum[i]);
  }
}

// The whole backward pass of one (batch, head). Pointers are at the head's
// first row; d_row [seq] and the two [kQueryBlock, kKeyBlock] blocks are scratch.
void BackwardHead(const AttentionShape& s, const float* q, const float* k, const float* v,
                  const float* out, const float* dout, const float* lse, float* dq, float* dk,
                  float* dv, float* d_row, float* probs, float* dprobs) {
  const int64_t rs = s.row_stride;
  const int64_t out_stride = s.heads * s.head_dim;
  const int64_t dh = s.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));

  for (int64_t i = 0; i < s.seq; ++i) {
    const float* o = out + i * out_stride;
    const float* g = dout + i * out_stride;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < dh; ++d) dot += o[d] * g[d];
    d_row[i] = dot;
    std::fill(dq + i * rs, dq + i * rs + dh, 0.0f);
    std::fill(dk + i * rs, dk + i * rs + dh, 0.0f);
    std::fill(dv + i * rs, dv + i * rs + dh, 0.0f);
  }

  for (int64_t q0 = 0; q0 < s.seq; q0 += kQueryBlock) {
    const int64_t bq = std::min(kQueryBlock, s.seq - q0);
    const int64_t key_end = s.causal ? q0 + bq : s.seq;
    const float* q_blk = q + q0 * rs;
    const float* dout_blk = dout + q0 * out_stride;
    float* dq_blk = dq + q0 * rs;
    for (int64_t k0 = 0; k0 < key_end; k0 += kKeyBlock) {
      const int64_t bk = std::min(kKeyBlock, key_end - k0);
      const float* k_blk = k + k0 * rs;
      const float* v_blk = v + k0 * rs;
      // probs [bq, bk] = scale * Q_blk K_blk^T, then exp(. - lse)
      Gemm(false, true, bq, bk, dh, scale, q_blk, rs, k_blk, rs, 0.0f, probs, bk);
      // dprobs [bq, bk] = dO_blk V_blk^T
      Gemm(false, true, bq, bk, dh, 1.0f, dout_blk, out_stride, v_blk, rs, 0.0f, dprobs, bk);
      for (int64_t i = 0; i < bq; ++i) {
        float* p = probs + i * bk;
        float* ds = dprobs + i * bk;
        const int64_t visible = VisibleKeys(s.causal, q0 + i, k0, bk);
        const float row_lse = lse[q0 + i];
        const float row_d = d_row[q0 + i];
#pragma omp simd
        for (int64_t j = 0; j < visible; ++j) {
          p[j] = FastExp(p[j] - row_lse);
          ds[j] = p[j] * (ds[j] - row_d);
        }
        std::fill(p + visible, p + bk, 0.0f);
        std::fill(ds + visible, ds + bk, 0.0f);
      }
      // dV_blk [bk, dh] += P^T dO_blk
      Gemm(true, false, bk, dh, bq, 1.0f, probs, bk, dout_blk, out_stride, 1.0f, dv + k0 * rs, rs);
      // dK_blk [bk, dh] += scale * dS^T Q_blk
      Gemm(true, false, bk, dh, bq, scale, dprobs, bk, q_blk, rs, 1.0f, dk + k0 * rs, rs);
      // dQ_blk [bq, dh] += scale * dS K_blk
      Gemm(false, false, bq, dh, bk, scale, dprobs, bk, k_blk, rs, 1.0f, dq_blk, rs);
    }
  }
}

}  // namespace

void AttentionForward(const AttentionShape& shape, const float* q, const float* k, const float* v,
                      float* out, float* lse) {
  const AttentionShape& s = shape;
  const int64_t query_blocks = (s.seq + kQueryBlock - 1) / kQueryBlock;
  const int64_t tasks = s.batch * s.heads * query_blocks;
  // Query blocks are independent in the forward pass: parallel over all of
  // them, so a single long sequence still fills every core. Inside the region
  // each sgemm runs on its own thread.
#pragma omp parallel
  {
    thread_local std::vector<float> scores_buffer, stats_buffer;
    float* scores = Scratch(scores_buffer, kQueryBlock * kKeyBlock);
    float* stats = Scratch(stats_buffer, 2 * kQueryBlock);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t bh = task / query_blocks;
      const int64_t b = bh / s.heads;
      const int64_t h = bh % s.heads;
      const int64_t q0 = (task % query_blocks) * kQueryBlock;
      const int64_t in_offset = HeadOffset(s, b, h, s.row_stride);
      ForwardQueryBlock(s, q + in_offset, k + in_offset, v + in_offset,
                        out + HeadOffset(s, b, h, s.heads * s.head_dim), lse + bh * s.seq, q0,
                        std::min(kQueryBlock, s.seq - q0), scores, stats, stats + kQueryBlock);
    }
  }
}

void AttentionBackward(const AttentionShape& shape, const float* q, const float* k, const float* v,
                       const float* out, const float* dout, const float* lse, float* dq, float* dk,
                       float* dv) {
  const AttentionShape& s = shape;
  const int64_t tasks = s.batch * s.heads;
#pragma omp parallel
  {
    thread_local std::vector<float> d_buffer, probs_buffer, dprobs_buffer;
    float* d_row = Scratch(d_buffer, s.seq);
    float* probs = Scratch(probs_buffer, kQueryBlock * kKeyBlock);
    float* dprobs = Scratch(dprobs_buffer, kQueryBlock * kKeyBlock);
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < tasks; ++bh) {
      const int64_t b = bh / s.heads;
      const int64_t h = bh % s.heads;
      const int64_t in_offset = HeadOffset(s, b, h, s.row_stride);
      const int64_t out_offset = HeadOffset(s, b, h, s.heads * s.head_dim);
      BackwardHead(s, q + in_offset, k + in_offset, v + in_offset, out + out_offset,
                   dout + out_offset, lse + bh * s.seq, dq + in_offset, dk + in_offset,
                   dv + in_offset, d_row, probs, dprobs);
    }
  }
}

}  // namespace tessera::cpu
