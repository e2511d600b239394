// LayerNorm and RMSNorm over the last dimension of [rows, dim].
//
// Conventions for every backward kernel in kernels/cpu: gradients of inputs
// (dx) are OVERWRITTEN; gradients of parameters (dgamma, dbeta, ...) are
// ACCUMULATED (+=), so micro-batches add up.
#pragma once

#include <cstdint>

namespace tessera::cpu {

// y = (x - mean) * rstd [* gamma + beta]. gamma/beta may be null (no affine).
// mean/rstd: [rows], saved for backward.
void LayerNormForward(const float* x, const float* gamma, const float* beta, float* y,
                      float* mean, float* rstd, int64_t rows, int64_t dim, float eps);
// dgamma/dbeta may be null when gamma/beta were null.
void LayerNormBackward(const float* dy, const float* x, const float* gamma, const float* mean,
                       const float* rstd, float* dx, float* dgamma, float* dbeta, int64_t rows,
                       int64_t dim);

// y = x * rstd * gamma, rstd = 1/sqrt(mean(x^2) + eps). gamma may be null.
// adaLN's affine-free LayerNorm and modulation in one pass over [B, S, D]
// (modulate.h's conventions: shift and scale rows `cond_stride` apart):
// y = LayerNorm(x) * (1 + scale[b]) + shift[b]; mean and rstd [B * S] kept
// for the backward, the same values LayerNormForward gives.
void LayerNormModulateForward(const float* x, const float* shift, const float* scale, float* y,
                              float* mean, float* rstd, int64_t batch, int64_t seq, int64_t dim,
                              int64_t cond_stride, float eps);
// With g = dy * (1 + scale[b]): dx = LayerNormBackward's dx of g
// (overwritten); dshift[b] += sum_s dy; dscale[b] += sum_s dy * xhat.
void LayerNormModulateBackward(const float* dy, const float* x, const float* mean,
                               const float* rstd, const float* scale, float* dx, float* dshift,
                               float* dscale, int64_t batch, int64_t seq, int64_t dim,
                               int64_t cond_stride);

void RmsNormForward(const float* x, const float* gamma, float* y, float* rstd, int64_t rows,
                    int64_t dim, float eps);
void RmsNormBackward(const float* dy, const float* x, const float* gamma, const float* rstd,
                     float* dx, float* dgamma, int64_t rows, int64_t dim);

}  // namespace tessera::cpu
