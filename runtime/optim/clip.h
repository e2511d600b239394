// Global gradient-norm clipping (optim.grad_clip).
//
// The global norm is sqrt(sum over ranks of Backend::SumSquares(local
// grads)), so a parallel run gathers one double per rank (counting each
// replicated gradient once) and then every rank applies the same ClipScale.
// The trainer does all of it on the device (GradientSync::GradNormSquared,
// Backend::StepGuard, the scale read by the AdamW kernels); ClipScale is the
// formula StepGuard computes, for host code (benchmarks, tests).
#pragma once

#include <cstdint>

namespace tessera {

// The factor to multiply gradients by: max_norm / total_norm when
// total_norm > max_norm, else 1. max_norm <= 0 disables clipping (1). A
// non-finite total_norm returns 1: the caller's NaN/Inf check must fire
// instead of clipping hiding it.
double ClipScale(double total_norm, double max_norm);

}  // namespace tessera
