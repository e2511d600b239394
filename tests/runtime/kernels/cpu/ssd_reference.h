// Naive double-precision references for the SSD scan and the causal conv1d:
// the token-by-token recurrence, written from the definitions and sharing no
// code with the kernels. Used by the kernel tests and the backend-ops test.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "runtime/kernels/cpu/causal_conv1d.h"
#include "runtime/kernels/cpu/ssd.h"

namespace tessera::cpu::reference {

struct SsdResult {
  std::vector<double> y;            // [B, L, H, P]
  std::vector<double> final_state;  // [B, H, P, N]
};

// S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T; y_t = S_t C_t + D x_t.
// D and initial_state may be empty (no skip, zero state).
inline SsdResult ReferenceSsd(const SsdShape& s, const std::vector<double>& x,
                              const std::vector<double>& dt, const std::vector<double>& A,
                              const std::vector<double>& B, const std::vector<double>& C,
                              const std::vector<double>& D,
                              const std::vector<double>& initial_state) {
  const int64_t H = s.heads, P = s.head_dim, G = s.groups, N = s.state_dim, L = s.seq;
  SsdResult r;
  r.y.assign(s.batch * L * H * P, 0.0);
  r.final_state.assign(s.batch * H * P * N, 0.0);
  if (!initial_state.empty()) r.final_state = initial_state;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / G);
      double* S = r.final_state.data() + (b * H + h) * P * N;
      for (int64_t t = 0; t < L; ++t) {
        const double d = dt[(b * L + t) * H + h];
        const double decay = std::exp(d * A[h]);
        const double* xt = x.data() + ((b * L + t) * H + h) * P;
        const double* bt = B.data() + ((b * L + t) * G + g) * N;
        const double* ct = C.data() + ((b * L + t) * G + g) * N;
        double* yt = r.y.data() + ((b * L + t) * H + h) * P;
        for (int64_t p = 0; p < P; ++p) {
          double acc = 0.0;
          for (int64_t n = 0; n < N; ++n) {
            S[p * N + n] = decay * S[p * N + n] + d * xt[p] * bt[n];
            acc += S[p * N + n] * ct[n];
          }
          yt[p] = acc + (D.empty() ? 0.0 : D[h] * xt[p]);
        }
      }
    }
  return r;
}

// y[b, t, c] = bias[c] + sum_k w[c, k] in[b, t - (K-1) + k, c]; bias and halo
// may be empty.
inline std::vector<double> ReferenceConv(const CausalConv1dShape& s, const std::vector<double>& x,
                                         const std::vector<double>& w,
                                         const std::vector<double>& bias,
                                         const std::vector<double>& halo) {
  const int64_t C = s.channels, K = s.width, L = s.seq;
  std::vector<double> y(s.batch * L * C);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double acc = bias.empty() ? 0.0 : bias[c];
        for (int64_t k = 0; k < K; ++k) {
          const int64_t tau = t - (K - 1) + k;
          double in = 0.0;
          if (tau >= 0) in = x[(b * L + tau) * C + c];
          else if (!halo.empty()) in = halo[(b * (K - 1) + K - 1 + tau) * C + c];
          acc += w[c * K + k] * in;
        }
        y[(b * L + t) * C + c] = acc;
      }
  return y;
}

}  // namespace tessera::cpu::reference
