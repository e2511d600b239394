// Naive double-precision attention for the kernel tests: the full score
// matrix of every (batch, head), softmax by definition, and the backward pass
// derived by hand from it (dP = dO V^T, dS = P * (dP - rowsum(P * dP))). It
// shares nothing with the blocked kernel but the layout.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "runtime/kernels/cpu/attention.h"

namespace tessera::cpu::reference {

// Element d of head h at token (b, s) of a token-major tensor with the given
// row stride.
inline int64_t AttentionIndex(const AttentionShape& s, int64_t row_stride, int64_t b, int64_t t,
                              int64_t h, int64_t d) {
  return (b * s.seq + t) * row_stride + h * s.head_dim + d;
}

// probs [S, S] of one (batch, head): row i is softmax over the keys i may see;
// masked entries are 0. Also returns each row's log-sum-exp.
inline std::vector<double> ReferenceProbs(const AttentionShape& s, const double* q, const double* k,
                                          int64_t b, int64_t h, std::vector<double>* lse) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.head_dim));
  std::vector<double> probs(s.seq * s.seq, 0.0);
  lse->assign(s.seq, 0.0);
  for (int64_t i = 0; i < s.seq; ++i) {
    const int64_t keys = s.causal ? i + 1 : s.seq;
    double max_score = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < keys; ++j) {
      double dot = 0.0;
      for (int64_t d = 0; d < s.head_dim; ++d) {
        dot += q[AttentionIndex(s, s.row_stride, b, i, h, d)] *
               k[AttentionIndex(s, s.row_stride, b, j, h, d)];
      }
      probs[i * s.seq + j] = scale * dot;
      max_score = std::max(max_score, scale * dot);
    }
    double sum = 0.0;
    for (int64_t j = 0; j < keys; ++j) sum += std::exp(probs[i * s.seq + j] - max_score);
    for (int64_t j = 0; j < keys; ++j) {
      probs[i * s.seq + j] = std::exp(probs[i * s.seq + j] - max_score) / sum;
    }
    (*lse)[i] = max_score + std::log(sum);
  }
  return probs;
}

// out [B, S, H*Dh], lse [B, H, S].
inline void ReferenceAttentionForward(const AttentionShape& s, const double* q, const double* k,
                                      const double* v, double* out, double* lse) {
  const int64_t out_stride = s.heads * s.head_dim;
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      std::vector<double> row_lse;
      const std::vector<double> probs = ReferenceProbs(s, q, k, b, h, &row_lse);
      for (int64_t i = 0; i < s.seq; ++i) {
        lse[(b * s.heads + h) * s.seq + i] = row_lse[i];
        for (int64_t d = 0; d < s.head_dim; ++d) {
          double acc = 0.0;
          for (int64_t j = 0; j < s.seq; ++j) {
            acc += probs[i * s.seq + j] * v[AttentionIndex(s, s.row_stride, b, j, h, d)];
          }
          out[AttentionIndex(s, out_stride, b, i, h, d)] = acc;
        }
      }
    }
  }
}

// dq, dk, dv in the q/k/v layout (row_stride); only head columns are written.
inline void ReferenceAttentionBackward(const AttentionShape& s, const double* q, const double* k,
                                       const double* v, const double* dout, double* dq, double* dk,
                                       double* dv) {
  const int64_t out_stride = s.heads * s.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.head_dim));
  auto at = [&](int64_t b, int64_t t, int64_t h, int64_t d) {
    return AttentionIndex(s, s.row_stride, b, t, h, d);
  };
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      std::vector<double> lse;
      const std::vector<double> probs = ReferenceProbs(s, q, k, b, h, &lse);
      std::vector<double> dscores(s.seq * s.seq, 0.0);
      for (int64_t i = 0; i < s.seq; ++i) {
        std::vector<double> dprobs(s.seq, 0.0);
        double weighted = 0.0;
        for (int64_t j = 0; j < s.seq; ++j) {
          for (int64_t d = 0; d < s.head_dim; ++d) {
            dprobs[j] += dout[AttentionIndex(s, out_stride, b, i, h, d)] * v[at(b, j, h, d)];
          }
          weighted += probs[i * s.seq + j] * dprobs[j];
        }
        for (int64_t j = 0; j < s.seq; ++j) {
          dscores[i * s.seq + j] = probs[i * s.seq + j] * (dprobs[j] - weighted);
        }
      }
      for (int64_t t = 0; t < s.seq; ++t) {
        for (int64_t d = 0; d < s.head_dim; ++d) {
          double gq = 0.0, gk = 0.0, gv = 0.0;
          for (int64_t u = 0; u < s.seq; ++u) {
            gq += dscores[t * s.seq + u] * k[at(b, u, h, d)];
            gk += dscores[u * s.seq + t] * q[at(b, u, h, d)];
            gv += probs[u * s.seq + t] * dout[AttentionIndex(s, out_stride, b, u, h, d)];
          }
          dq[at(b, t, h, d)] = scale * gq;
          dk[at(b, t, h, d)] = scale * gk;
          dv[at(b, t, h, d)] = gv;
        }
      }
    }
  }
}

}  // namespace tessera::cpu::reference
