// Multi-head scaled dot-product attention, softmax(Q K^T / sqrt(d)) V.
//
// Memory is linear in sequence length: the forward pass keeps only the
// log-sum-exp of each query row; the backward pass recomputes the
// probabilities block by block (FlashAttention's recipe, on the CPU).
//
// Layout: token-major. Q, K, V hold for each (batch b, position s) a row of
// heads*head_dim values, head h at columns [h*head_dim, (h+1)*head_dim).
// Consecutive tokens are `row_stride` floats apart, so Q, K and V may point
// into one fused QKV projection [B, S, 3, H, Dh] (row_stride = 3*H*Dh) or be
// separate contiguous arrays (row_stride = H*Dh).
#pragma once

#include <cstdint>

#include "runtime/kernels/kernel_args.h"

namespace tessera::cpu {

using ::tessera::AttentionShape;  // runtime/kernels/kernel_args.h

// out: [B, S, H*Dh] contiguous. lse: [B, H, S] log-sum-exp of scaled scores.
void AttentionForward(const AttentionShape& shape, const float* q, const float* k,
                      const float* v, float* out, float* lse);

// dq, dk, dv: same layout as q, k, v (row_stride); OVERWRITTEN.
void AttentionBackward(const AttentionShape& shape, const float* q, const float* k,
                       const float* v, const float* out, const float* dout, const float* lse,
                       float* dq, float* dk, float* dv);

}  // namespace tessera::cpu
