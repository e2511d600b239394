// Global gradient-norm clipping (optim.grad_clip).
//
// The global norm is sqrt(sum over ranks of GradNormSquaredPartial(local
// grads)), so a parallel run all-reduces one double per rank (counting each
// replicated gradient once) and then every rank applies the same ClipScale.
#pragma once

#include <cstdint>

namespace tessera {

// Sum of g[i]^2 in double. Deterministic: the same bits for the same input
// whatever the thread count (fixed blocks, summed in a fixed order).
double GradNormSquaredPartial(const float* g, int64_t n);

// The factor to multiply gradients by: max_norm / total_norm when
// total_norm > max_norm, else 1. max_norm <= 0 disables clipping (1). A
// non-finite total_norm returns 1: the caller's NaN/Inf check must fire
// instead of clipping hiding it.
double ClipScale(double total_norm, double max_norm);

// x[i] *= scale for i in [0, n).
void ScaleInPlace(float* x, int64_t n, float scale);

}  // namespace tessera
