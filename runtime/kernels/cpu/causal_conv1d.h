// Depthwise causal 1-D convolution over the sequence, as Mamba's conv1d over
// x, B, C (kernel width K, e.g. 4, with bias), channels-last:
//   y[b, t, c] = bias[c] + sum_{k<K} w[c, k] * in[b, t - (K-1) + k, c]
// where in[b, tau, c] is x[b, tau, c] for tau >= 0 and the halo — the K-1
// inputs preceding the sequence, oldest first — for tau < 0 (zeros when no
// halo is given). The halo is what state passing across sequence shards and
// generation carry from one call to the next.
//
// Layouts: x, y, dx, dy [B, L, C]; weight, dweight [C, K] (PyTorch's
// [C, 1, K] squeezed); bias, dbias [C]; halo, dhalo, state [B, K-1, C].
// Conventions: dx, dhalo OVERWRITTEN; dweight, dbias ACCUMULATE, summed in
// an order independent of the thread count.
#pragma once

#include <cstdint>

#include "runtime/kernels/kernel_args.h"

namespace tessera::cpu {

using ::tessera::CausalConv1dShape;

// bias, halo may be null. halo_out (may be null, may alias halo) receives the
// last K-1 inputs of halo ++ x: the halo of the next shard.
void CausalConv1dForward(const CausalConv1dShape& shape, const float* x, const float* weight,
                         const float* bias, const float* halo, float* y, float* halo_out);

// halo may be null (zeros); dbias, dhalo may be null (not computed).
void CausalConv1dBackward(const CausalConv1dShape& shape, const float* x, const float* weight,
                          const float* halo, const float* dy, float* dx, float* dweight,
                          float* dbias, float* dhalo);

// One token for generation: x, y [B, C]; state [B, K-1, C] (the last K-1
// inputs, oldest first) is shifted in place to end with x.
void CausalConv1dStep(const CausalConv1dShape& shape, const float* x, const float* weight,
                      const float* bias, float* state, float* y);

}  // namespace tessera::cpu
