// adaLN pieces of DiT: per-sample shift/scale/gate over a token sequence.
// x, y: [B, S, D]; shift, scale, gate: rows of length D, sample b's row at
// b * cond_stride (so they may be column slices of one adaLN projection
// [B, 6*D], cond_stride = 6*D).
#pragma once

#include <cstdint>

namespace tessera::cpu {

// y = x * (1 + scale[b]) + shift[b]
void ModulateForward(const float* x, const float* shift, const float* scale, float* y,
                     int64_t batch, int64_t seq, int64_t dim, int64_t cond_stride);
// dx = dy * (1 + scale[b]) (overwritten); dshift[b] += sum_s dy; dscale[b] += sum_s dy * x.
// dshift and dscale use cond_stride too.
void ModulateBackward(const float* dy, const float* x, const float* scale, float* dx,
                      float* dshift, float* dscale, int64_t batch, int64_t seq, int64_t dim,
                      int64_t cond_stride);

// residual[b, s, :] += gate[b] * y[b, s, :]
void GatedResidualForward(float* residual, const float* y, const float* gate, int64_t batch,
                          int64_t seq, int64_t dim, int64_t cond_stride);
// dy = dresidual * gate[b] (overwritten); dgate[b] += sum_s dresidual * y.
void GatedResidualBackward(const float* dresidual, const float* y, const float* gate, float* dy,
                           float* dgate, int64_t batch, int64_t seq, int64_t dim,
                           int64_t cond_stride);

}  // namespace tessera::cpu
