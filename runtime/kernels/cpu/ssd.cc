// Chunked SSD scan: one (batch, head) per thread, its chunks in order, every
// block product a oneDNN sgemm on the strided rows of that head.
//
// Numerics: the in-chunk cumulative sums of dt*A are kept in double and the
// decays exp(cs_t - cs_s) are formed from double differences, so a long
// chunk with a large |dt*A| loses no bits to cancellation; everything else
// (states included) is fp32, as in the reference.
//
// Backward (derivation in docs/mamba.md): the chunk states are recomputed by
// a state-only forward pass, then the chunks are walked in reverse carrying
// dS (the gradient of the state leaving the chunk). Gradients of the
// log-decays are gathered per position (dcs) and turned into d(dt), dA by a
// reverse cumulative sum. Heads of one group write their dB, dC into a
// per-head buffer that is summed in head order, so no two threads write the
// same element and the result does not depend on the thread count.
#include "runtime/kernels/cpu/ssd.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/kernels/cpu/gemm.h"
#include "runtime/kernels/cpu/parallel_loops.h"
#include "runtime/kernels/cpu/vector_math.h"

namespace tessera::cpu {
namespace {

// Where one head's rows live, and their strides (in floats).
struct HeadView {
  const float* x;   // [L, P], ld_x
  const float* dt;  // [L], stride heads
  const float* B;   // [L, N], ld_bc
  const float* C;   // [L, N], ld_bc
  float A;
  int64_t ld_x, ld_bc, dt_stride;
};

HeadView ViewOf(const SsdShape& s, const float* x, const float* dt, const float* A,
                const float* B, const float* C, int64_t b, int64_t h) {
  const int64_t g = h / (s.heads / s.groups);
  HeadView v;
  v.x = x + (b * s.seq * s.heads + h) * s.head_dim;
  v.dt = dt + b * s.seq * s.heads + h;
  v.B = B + (b * s.seq * s.groups + g) * s.state_dim;
  v.C = C + (b * s.seq * s.groups + g) * s.state_dim;
  v.A = A[h];
  v.ld_x = s.heads * s.head_dim;
  v.ld_bc = s.groups * s.state_dim;
  v.dt_stride = s.heads;
  return v;
}

// Per-thread scratch for one chunk, sized once per call.
struct ChunkScratch {
  std::vector<double> cs;           // [Q] in-chunk cumsum of dt*A
  std::vector<float> decay_in;      // [Q] exp(cs_t)
  std::vector<float> decay_to_end;  // [Q] exp(cs_last - cs_t)
  std::vector<float> xdt;           // [Q, P] x * dt
  std::vector<float> weighted;      // [Q, P]
  std::vector<float> scores;        // [Q, Q]
  std::vector<float> mask;          // [Q, Q] exp(cs_t - cs_s), s <= t
  std::vector<float> dscores;       // [Q, Q]
  std::vector<float> rows_n;        // [Q, N]
  std::vector<float> rows_p;        // [Q, P]
  std::vector<float> dxdt;          // [Q, P]
  std::vector<double> dcs;          // [Q]

  ChunkScratch(const SsdShape& s, bool backward) {
    const int64_t q = s.chunk, p = s.head_dim, n = s.state_dim;
    cs.resize(q), decay_in.resize(q), decay_to_end.resize(q);
    xdt.resize(q * p), weighted.resize(q * p), scores.resize(q * q), rows_n.resize(q * n);
    if (backward) {
      mask.resize(q * q), dscores.resize(q * q), rows_p.resize(q * p), dxdt.resize(q * p);
      dcs.resize(q);
    }
  }
};

// Fills cs, decays and x*dt for rows [t0, t0 + len) of one head.
void PrepareChunk(const SsdShape& s, const HeadView& v, int64_t t0, int64_t len,
                  ChunkScratch& w) {
  double sum = 0.0;
  for (int64_t i = 0; i < len; ++i) {
    sum += static_cast<double>(v.dt[(t0 + i) * v.dt_stride]) * v.A;
    w.cs[i] = sum;
  }
  const double last = w.cs[len - 1];
  for (int64_t i = 0; i < len; ++i) {
    w.decay_in[i] = FastExp(static_cast<float>(w.cs[i]));
    w.decay_to_end[i] = FastExp(static_cast<float>(last - w.cs[i]));
  }
  const int64_t p = s.head_dim;
  for (int64_t i = 0; i < len; ++i) {
    const float d = v.dt[(t0 + i) * v.dt_stride];
    const float* xr = v.x + (t0 + i) * v.ld_x;
    float* out = w.xdt.data() + i * p;
#pragma omp simd
    for (int64_t j = 0; j < p; ++j) out[j] = xr[j] * d;
  }
}

// mask[t, s] = exp(cs_t - cs_s) for s <= t, 0 above the diagonal.
void FillMask(int64_t len, const double* cs, float* mask) {
  for (int64_t t = 0; t < len; ++t) {
    float* row = mask + t * len;
#pragma omp simd
    for (int64_t j = 0; j <= t; ++j) row[j] = FastExp(static_cast<float>(cs[t] - cs[j]));
    std::fill(row + t + 1, row + len, 0.0f);
  }
}

// state [P, N] <- exp(cs_last) state + (xdt * decay_to_end)^T B_chunk.
// `has_state` false means state is zero on entry.
void AdvanceState(const SsdShape& s, const HeadView& v, int64_t t0, int64_t len, bool has_state,
                  ChunkScratch& w, float* state) {
  const int64_t p = s.head_dim, n = s.state_dim;
  for (int64_t i = 0; i < len; ++i) {
    const float d = w.decay_to_end[i];
    const float* in = w.xdt.data() + i * p;
    float* out = w.weighted.data() + i * p;
#pragma omp simd
    for (int64_t j = 0; j < p; ++j) out[j] = in[j] * d;
  }
  if (has_state) {
    const float chunk_decay = w.decay_in[len - 1];
    for (int64_t i = 0; i < p * n; ++i) state[i] *= chunk_decay;
  }
  Gemm(true, false, p, n, len, 1.0f, w.weighted.data(), p, v.B + t0 * v.ld_bc, v.ld_bc,
       has_state ? 1.0f : 0.0f, state, n);
}

// Outputs of rows [t0, t0 + len) from the state entering the chunk.
void ChunkOutput(const SsdShape& s, const HeadView& v, int64_t t0, int64_t len, bool has_state,
                 const float* state, ChunkScratch& w, float* y) {
  const int64_t p = s.head_dim, n = s.state_dim;
  const float* b_rows = v.B + t0 * v.ld_bc;
  const float* c_rows = v.C + t0 * v.ld_bc;
  // scores [len, len] = C B^T, masked by the decays.
  Gemm(false, true, len, len, n, 1.0f, c_rows, v.ld_bc, b_rows, v.ld_bc, 0.0f, w.scores.data(),
       len);
  for (int64_t t = 0; t < len; ++t) {
    float* row = w.scores.data() + t * len;
#pragma omp simd
    for (int64_t j = 0; j <= t; ++j) row[j] *= FastExp(static_cast<float>(w.cs[t] - w.cs[j]));
    std::fill(row + t + 1, row + len, 0.0f);
  }
  float* y_rows = y + t0 * v.ld_x;
  Gemm(false, false, len, p, len, 1.0f, w.scores.data(), len, w.xdt.data(), p, 0.0f, y_rows,
       v.ld_x);
  if (!has_state) return;
  // y += diag(exp(cs)) C state^T
  for (int64_t i = 0; i < len; ++i) {
    const float d = w.decay_in[i];
    const float* in = c_rows + i * v.ld_bc;
    float* out = w.rows_n.data() + i * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = in[j] * d;
  }
  Gemm(false, true, len, p, n, 1.0f, w.rows_n.data(), n, state, n, 1.0f, y_rows, v.ld_x);
}

void ForwardHead(const SsdShape& s, const HeadView& v, float D, const float* initial_state,
                 float* y, float* state, ChunkScratch& w) {
  const int64_t pn = s.head_dim * s.state_dim;
  bool has_state = initial_state != nullptr;
  if (has_state) std::memcpy(state, initial_state, pn * sizeof(float));
  for (int64_t t0 = 0; t0 < s.seq; t0 += s.chunk) {
    const int64_t len = std::min(s.chunk, s.seq - t0);
    PrepareChunk(s, v, t0, len, w);
    ChunkOutput(s, v, t0, len, has_state, state, w, y);
    AdvanceState(s, v, t0, len, has_state, w, state);
    has_state = true;
  }
  if (D == 0.0f) return;
  for (int64_t t = 0; t < s.seq; ++t) {
    const float* xr = v.x + t * v.ld_x;
    float* yr = y + t * v.ld_x;
#pragma omp simd
    for (int64_t j = 0; j < s.head_dim; ++j) yr[j] += D * xr[j];
  }
}

bool ValidShape(const SsdShape& s) {
  return s.batch >= 0 && s.seq >= 0 && s.heads > 0 && s.head_dim > 0 && s.groups > 0 &&
         s.heads % s.groups == 0 && s.state_dim > 0 && s.chunk > 0;
}

}  // namespace

void SsdScanForward(const SsdShape& s, const float* x, const float* dt, const float* A,
                    const float* B, const float* C, const float* D, const float* initial_state,
                    float* y, float* final_state) {
  if (!ValidShape(s)) return;
  const int64_t pn = s.head_dim * s.state_dim;
  const int64_t pairs = s.batch * s.heads;
#pragma omp parallel if (pairs > 1)
  {
    ChunkScratch w(s, /*backward=*/false);
    std::vector<float> scratch_state(final_state ? 0 : pn);
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < pairs; ++bh) {
      const int64_t b = bh / s.heads, h = bh % s.heads;
      const HeadView v = ViewOf(s, x, dt, A, B, C, b, h);
      float* state = final_state ? final_state + bh * pn : scratch_state.data();
      float* y_head = y + (b * s.seq * s.heads + h) * s.head_dim;
      if (s.seq == 0) {
        if (initial_state) std::memcpy(state, initial_state + bh * pn, pn * sizeof(float));
        else std::fill(state, state + pn, 0.0f);
        continue;
      }
      ForwardHead(s, v, D ? D[h] : 0.0f, initial_state ? initial_state + bh * pn : nullptr,
                  y_head, state, w);
    }
  }
}

namespace {

// Destinations of one head's dB, dC rows: the outputs themselves (one head
// per group) or that head's private buffer.
struct GradRows {
  float* dB;
  float* dC;
  int64_t ld;
};

// One chunk of the backward pass. On entry dstate_out is d(state leaving the
// chunk); on exit dstate_in holds d(state entering it). dcs collects
// d(cs_t); dxdt the gradient of x*dt.
void BackwardChunk(const SsdShape& s, const HeadView& v, int64_t t0, int64_t len, bool has_state,
                   const float* state_in, const float* dy_head, const float* dstate_out,
                   float* dstate_in, GradRows g, ChunkScratch& w) {
  const int64_t p = s.head_dim, n = s.state_dim, pn = p * n;
  const float* b_rows = v.B + t0 * v.ld_bc;
  const float* c_rows = v.C + t0 * v.ld_bc;
  const float* dy = dy_head + t0 * v.ld_x;
  float* dB = g.dB + t0 * g.ld;
  float* dC = g.dC + t0 * g.ld;
  double* dcs = w.dcs.data();
  std::fill(dcs, dcs + len, 0.0);

  // Intra-chunk: M = (C B^T) ∘ mask, Y = M xdt.
  float* cb = w.scores.data();
  float* dm = w.dscores.data();
  FillMask(len, w.cs.data(), w.mask.data());
  Gemm(false, true, len, len, n, 1.0f, c_rows, v.ld_bc, b_rows, v.ld_bc, 0.0f, cb, len);
  // dM = dy xdt^T; dxdt = M^T dy (M formed in `weighted`-sized dscores first).
  for (int64_t i = 0; i < len * len; ++i) dm[i] = cb[i] * w.mask[i];
  Gemm(true, false, len, p, len, 1.0f, dm, len, dy, v.ld_x, 0.0f, w.dxdt.data(), p);
  Gemm(false, true, len, len, p, 1.0f, dy, v.ld_x, w.xdt.data(), p, 0.0f, dm, len);
  // d(C B^T) = dM ∘ mask; d(log mask)[t, s] = dM ∘ M = dCB ∘ CB, which adds
  // to dcs_t and subtracts from dcs_s.
  for (int64_t t = 0; t < len; ++t) {
    float* row = dm + t * len;
    const float* mrow = w.mask.data() + t * len;
    const float* crow = cb + t * len;
    double row_sum = 0.0;
    for (int64_t j = 0; j <= t; ++j) {
      row[j] *= mrow[j];
      const double gj = static_cast<double>(row[j]) * crow[j];
      row_sum += gj;
      dcs[j] -= gj;
    }
    dcs[t] += row_sum;
    std::fill(row + t + 1, row + len, 0.0f);
  }
  Gemm(false, false, len, n, len, 1.0f, dm, len, b_rows, v.ld_bc, 0.0f, dC, g.ld);
  Gemm(true, false, len, n, len, 1.0f, dm, len, c_rows, v.ld_bc, 0.0f, dB, g.ld);

  // State to output: y_t += exp(cs_t) state_in C_t.
  const float chunk_decay = w.decay_in[len - 1];
  if (has_state) {
    float* dc_off = w.rows_n.data();
    Gemm(false, false, len, n, p, 1.0f, dy, v.ld_x, state_in, n, 0.0f, dc_off, n);
    for (int64_t i = 0; i < len; ++i) {
      const float d = w.decay_in[i];
      float* row = dc_off + i * n;
      const float* crow = c_rows + i * v.ld_bc;
      float* out = dC + i * g.ld;
      double dot = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        row[j] *= d;
        dot += static_cast<double>(row[j]) * crow[j];
        out[j] += row[j];
      }
      dcs[i] += dot;
    }
    double frob = 0.0;
    for (int64_t i = 0; i < pn; ++i) frob += static_cast<double>(dstate_out[i]) * state_in[i];
    dcs[len - 1] += chunk_decay * frob;
  }
  // dstate_in = exp(cs_last) dstate_out + (dy ∘ exp(cs))^T C
  for (int64_t i = 0; i < len; ++i) {
    const float d = w.decay_in[i];
    const float* in = dy + i * v.ld_x;
    float* out = w.rows_p.data() + i * p;
#pragma omp simd
    for (int64_t j = 0; j < p; ++j) out[j] = in[j] * d;
  }
  for (int64_t i = 0; i < pn; ++i) dstate_in[i] = chunk_decay * dstate_out[i];
  Gemm(true, false, p, n, len, 1.0f, w.rows_p.data(), p, c_rows, v.ld_bc, 1.0f, dstate_in, n);

  // Chunk state: S_out = exp(cs_last) S_in + sum_s w_s xdt_s B_s^T, w_s = exp(cs_last - cs_s).
  float* db_p = w.rows_p.data();  // [len, P] = B dS_out^T
  Gemm(false, true, len, p, n, 1.0f, b_rows, v.ld_bc, dstate_out, n, 0.0f, db_p, p);
  for (int64_t i = 0; i < len; ++i) {
    const float ws = w.decay_to_end[i];
    const float* row = db_p + i * p;
    const float* xr = w.xdt.data() + i * p;
    float* dxr = w.dxdt.data() + i * p;
    float* xw = w.weighted.data() + i * p;
    double dot = 0.0;
    for (int64_t j = 0; j < p; ++j) {
      dxr[j] += ws * row[j];
      dot += static_cast<double>(xr[j]) * row[j];
      xw[j] = xr[j] * ws;
    }
    dcs[len - 1] += ws * dot;
    dcs[i] -= ws * dot;
  }
  Gemm(false, false, len, n, p, 1.0f, w.weighted.data(), p, dstate_out, n, 1.0f, dB, g.ld);
}

// dx, ddt of rows [t0, t0 + len) from dxdt and dcs; dA, dD partial sums.
void FinishChunk(const SsdShape& s, const HeadView& v, int64_t t0, int64_t len, float D,
                 const float* dy_head, float* dx_head, float* ddt_head, ChunkScratch& w,
                 double* dA_sum, double* dD_sum) {
  const int64_t p = s.head_dim;
  double da = 0.0;  // reverse cumulative sum of dcs: d(dt_t * A)
  for (int64_t i = len - 1; i >= 0; --i) {
    da += w.dcs[i];
    const int64_t t = t0 + i;
    const float d = v.dt[t * v.dt_stride];
    const float* xr = v.x + t * v.ld_x;
    const float* dyr = dy_head + t * v.ld_x;
    const float* dxdt = w.dxdt.data() + i * p;
    float* dxr = dx_head + t * v.ld_x;
    double dot_x = 0.0, dot_d = 0.0;
    for (int64_t j = 0; j < p; ++j) {
      dot_x += static_cast<double>(xr[j]) * dxdt[j];
      dot_d += static_cast<double>(dyr[j]) * xr[j];
      dxr[j] = d * dxdt[j] + D * dyr[j];
    }
    ddt_head[t * v.dt_stride] = static_cast<float>(dot_x + da * v.A);
    *dA_sum += da * d;
    *dD_sum += dot_d;
  }
}

}  // namespace

void SsdScanBackward(const SsdShape& s, const float* x, const float* dt, const float* A,
                     const float* B, const float* C, const float* D, const float* initial_state,
                     const float* dy, const float* d_final_state, float* dx, float* ddt, float* dA,
                     float* dB, float* dC, float* dD, float* d_initial_state) {
  if (!ValidShape(s)) return;
  const int64_t pn = s.head_dim * s.state_dim;
  const int64_t n = s.state_dim;
  const int64_t pairs = s.batch * s.heads;
  const int64_t heads_per_group = s.heads / s.groups;
  const int64_t chunks = (s.seq + s.chunk - 1) / s.chunk;
  // Heads sharing a group write their dB, dC rows here ([B, H, L, N]) and are
  // summed in head order below.
  const bool shared = heads_per_group > 1;
  std::vector<float> head_dB(shared ? pairs * s.seq * n : 0);
  std::vector<float> head_dC(shared ? pairs * s.seq * n : 0);
  std::vector<double> dA_part(pairs, 0.0), dD_part(pairs, 0.0);

#pragma omp parallel if (pairs > 1)
  {
    ChunkScratch w(s, /*backward=*/true);
    std::vector<float> states((chunks + 1) * pn);  // state entering chunk c
    std::vector<float> dstate_a(pn), dstate_b(pn);
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < pairs; ++bh) {
      const int64_t b = bh / s.heads, h = bh % s.heads;
      const int64_t g_index = h / heads_per_group;
      const HeadView v = ViewOf(s, x, dt, A, B, C, b, h);
      const int64_t head_offset = (b * s.seq * s.heads + h) * s.head_dim;
      GradRows rows;
      if (shared) {
        rows = {head_dB.data() + bh * s.seq * n, head_dC.data() + bh * s.seq * n, n};
      } else {
        const int64_t off = (b * s.seq * s.groups + g_index) * n;
        rows = {dB + off, dC + off, s.groups * n};
      }
      // Recompute the state entering each chunk.
      const bool has_init = initial_state != nullptr;
      if (has_init) std::memcpy(states.data(), initial_state + bh * pn, pn * sizeof(float));
      else std::fill(states.begin(), states.begin() + pn, 0.0f);
      for (int64_t c = 0; c + 1 < chunks; ++c) {
        const int64_t t0 = c * s.chunk, len = std::min(s.chunk, s.seq - t0);
        PrepareChunk(s, v, t0, len, w);
        std::memcpy(states.data() + (c + 1) * pn, states.data() + c * pn, pn * sizeof(float));
        AdvanceState(s, v, t0, len, true, w, states.data() + (c + 1) * pn);
      }
      // Walk the chunks in reverse, carrying d(state).
      float* dout = dstate_a.data();
      float* din = dstate_b.data();
      if (d_final_state) std::memcpy(dout, d_final_state + bh * pn, pn * sizeof(float));
      else std::fill(dout, dout + pn, 0.0f);
      const float d_skip = D ? D[h] : 0.0f;
      for (int64_t c = chunks - 1; c >= 0; --c) {
        const int64_t t0 = c * s.chunk, len = std::min(s.chunk, s.seq - t0);
        PrepareChunk(s, v, t0, len, w);
        BackwardChunk(s, v, t0, len, has_init || c > 0, states.data() + c * pn, dy + head_offset,
                      dout, din, rows, w);
        FinishChunk(s, v, t0, len, d_skip, dy + head_offset, dx + head_offset,
                    ddt + b * s.seq * s.heads + h, w, &dA_part[bh], &dD_part[bh]);
        std::swap(dout, din);
      }
      if (d_initial_state) std::memcpy(d_initial_state + bh * pn, dout, pn * sizeof(float));
    }
  }

  if (shared) {
    const int64_t rows_total = s.batch * s.seq;
#pragma omp parallel for if (ShouldParallelize(rows_total * s.heads * n))
    for (int64_t bt = 0; bt < rows_total; ++bt) {
      const int64_t b = bt / s.seq, t = bt % s.seq;
      for (int64_t g = 0; g < s.groups; ++g) {
        float* db = dB + (bt * s.groups + g) * n;
        float* dc = dC + (bt * s.groups + g) * n;
        std::fill(db, db + n, 0.0f);
        std::fill(dc, dc + n, 0.0f);
        for (int64_t k = 0; k < heads_per_group; ++k) {
          const int64_t bh = b * s.heads + g * heads_per_group + k;
          const float* hb = head_dB.data() + (bh * s.seq + t) * n;
          const float* hc = head_dC.data() + (bh * s.seq + t) * n;
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            db[j] += hb[j];
            dc[j] += hc[j];
          }
        }
      }
    }
  }
  for (int64_t h = 0; h < s.heads; ++h) {
    double sa = 0.0, sd = 0.0;
    for (int64_t b = 0; b < s.batch; ++b) {
      sa += dA_part[b * s.heads + h];
      sd += dD_part[b * s.heads + h];
    }
    dA[h] += static_cast<float>(sa);
    if (D && dD) dD[h] += static_cast<float>(sd);
  }
}

void SsdStep(const SsdShape& s, const float* x, const float* dt, const float* A, const float* B,
             const float* C, const float* D, float* state, float* y) {
  if (!ValidShape(s)) return;
  const int64_t p = s.head_dim, n = s.state_dim, pn = p * n;
  const int64_t heads_per_group = s.heads / s.groups;
  const int64_t pairs = s.batch * s.heads;
#pragma omp parallel for if (ShouldParallelize(pairs * pn))
  for (int64_t bh = 0; bh < pairs; ++bh) {
    const int64_t b = bh / s.heads, h = bh % s.heads, g = h / heads_per_group;
    const float d = dt[bh];
    const float decay = std::exp(d * A[h]);
    const float* xr = x + bh * p;
    const float* br = B + (b * s.groups + g) * n;
    const float* cr = C + (b * s.groups + g) * n;
    float* st = state + bh * pn;
    float* yr = y + bh * p;
    const float skip = D ? D[h] : 0.0f;
    for (int64_t i = 0; i < p; ++i) {
      float* row = st + i * n;
      const float xd = xr[i] * d;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < n; ++j) {
        row[j] = decay * row[j] + xd * br[j];
        acc += row[j] * cr[j];
      }
      yr[i] = acc + skip * xr[i];
    }
  }
}

double SsdScanForwardFlops(const SsdShape& s) {
  double per_head = 0.0;
  for (int64_t t0 = 0; t0 < s.seq; t0 += s.chunk) {
    const double len = static_cast<double>(std::min(s.chunk, s.seq - t0));
    // C B^T and the masked product with x*dt; state to output and chunk state.
    per_head += 2.0 * len * len * (s.state_dim + s.head_dim) +
                4.0 * len * s.head_dim * s.state_dim;
  }
  return per_head * static_cast<double>(s.batch * s.heads);
}

}  // namespace tessera::cpu
