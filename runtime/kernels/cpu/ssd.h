// The SSD scan of Mamba-2 ("Transformers are SSMs", Dao & Gu 2024), fp32
// with fp32 states, in the chunked form of the reference implementation
// (mamba_ssm's ssd_minimal / ssd_combined), plus its one-token recurrent step.
//
// Per (batch b, head h, of group g = h / (heads / groups)) the scan is the
// recurrence, with a state S_t of [head_dim, state_dim]:
//   S_t = exp(dt_t * A_h) S_{t-1} + dt_t * x_t B_t^T       (x_t [P], B_t [N])
//   y_t = S_t C_t + D_h x_t                                  (C_t [N])
// computed chunk by chunk (chunk length Q; the last chunk may be shorter):
//   1. intra-chunk (diagonal block): Y = (C B^T ∘ L) (x ∘ dt), where
//      L[t, s] = exp(cs_t - cs_s) for s <= t, cs the in-chunk cumsum of dt*A;
//   2. state to output: Y += diag(exp(cs)) C S_prev^T;
//   3. chunk state and inter-chunk recurrence:
//      S = exp(cs_last) S_prev + (x ∘ dt ∘ exp(cs_last - cs))^T B.
// Every step is a GEMM on one (b, h); (b, h) pairs run in parallel. See
// docs/mamba.md for the derivation of the backward pass and FLOP counts.
//
// Layouts (token-major, contiguous):
//   x, y, dx, dy     [B, L, H, P]      dt, ddt   [B, L, H] (softplus'ed, biased)
//   A, dA            [H] (negative)    D, dD     [H] (optional: null = no skip)
//   Bm, Cm, dB, dC   [B, L, G, N]      states    [B, H, P, N]
// Conventions (as every kernel here): gradients of activations (dx, ddt, dB,
// dC, d_initial_state) are OVERWRITTEN; gradients of parameters (dA, dD)
// ACCUMULATE. Results are bit-identical for any thread count.
#pragma once

#include <cstdint>

#include "runtime/kernels/kernel_args.h"

namespace tessera::cpu {

using ::tessera::SsdShape;

// y = scan(x, dt, A, B, C) + D x. initial_state [B, H, P, N] may be null
// (zeros); final_state [B, H, P, N] may be null (not written).
void SsdScanForward(const SsdShape& shape, const float* x, const float* dt, const float* A,
                    const float* B, const float* C, const float* D, const float* initial_state,
                    float* y, float* final_state);

// Gradients of <dy, y> + <d_final_state, final_state>. d_final_state may be
// null (zero); d_initial_state may be null (not written); D null means no
// skip (dD untouched, may be null). The chunk states are recomputed, so the
// inputs are those of the forward call.
void SsdScanBackward(const SsdShape& shape, const float* x, const float* dt, const float* A,
                     const float* B, const float* C, const float* D, const float* initial_state,
                     const float* dy, const float* d_final_state, float* dx, float* ddt, float* dA,
                     float* dB, float* dC, float* dD, float* d_initial_state);

// One token of the recurrence, for generation (shape.seq ignored):
//   x, y [B, H, P]; dt [B, H]; B, C [B, G, N]; state [B, H, P, N] updated in place.
void SsdStep(const SsdShape& shape, const float* x, const float* dt, const float* A,
             const float* B, const float* C, const float* D, float* state, float* y);

// FLOPs of one forward scan as the benchmarks count them (multiply-adds x 2
// of the einsums: C B^T, the masked product with x, the state-to-output and
// the chunk-state products). Backward is counted as twice the forward.
double SsdScanForwardFlops(const SsdShape& shape);

}  // namespace tessera::cpu
