// Global gradient-norm clipping (optim.grad_clip).
//
// The global norm is sqrt(sum over ranks of Backend::SumSquares(local
// grads)), so a parallel run all-reduces one double per rank (counting each
// replicated gradient once) and then every rank applies the same ClipScale
// (Backend::Scale).
#pragma once

#include <cstdint>

namespace tessera {

// The factor to multiply gradients by: max_norm / total_norm when
// total_norm > max_norm, else 1. max_norm <= 0 disables clipping (1). A
// non-finite total_norm returns 1: the caller's NaN/Inf check must fire
// instead of clipping hiding it.
double ClipScale(double total_norm, double max_norm);

}  // namespace tessera
