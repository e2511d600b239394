// Attention for bf16 runs on the CPU: the contract of attention.h (token-major
// Q/K/V rows `row_stride` apart, out [B, S, H*Dh] contiguous, lse [B, H, S]
// natural-log log-sum-exp of the scaled scores, dq/dk/dv overwritten) with
// the rounding of the CUDA tensor-core kernel (runtime/kernels/cuda/
// attention_bf16.h), so that a bf16 run's attention rounds at the same points
// on both backends and they differ only in the order of fp32 sums:
//
//   - Q, K, V and dO are rounded to bf16 (nearest even, as GemmBf16);
//   - the six products Q K^T, P V, dO V^T, P^T dO, dS^T Q and dS K multiply
//     bf16 inputs and accumulate in fp32;
//   - scores, row max, row sum, lse, D = rowsum(bf16(dO) * O) and
//     dS = P (dP - D) are fp32; P (forward and backward) and dS are rounded
//     to bf16 only as the inputs of the products that consume them; the
//     forward's row sum adds the unrounded P.
//
// Each operand is rounded once per call, into blocked bf16 buffers laid out
// for the products (pairs of bf16 along the summed dimension in one 32-bit
// word, the layout of the AVX-512 BF16 dot product `vdpbf16ps`); the products
// then run on those instructions where the CPU has them (Zen 4, Cooper Lake,
// Sapphire Rapids and later; detected at run time) and on portable code that
// rounds at the same points elsewhere (plain loops the compiler vectorizes
// for the build's target; its speed on such CPUs has not been measured).
#pragma once

#include <cstdint>

#include "runtime/kernels/kernel_args.h"

namespace tessera::cpu {

// Whether the CUDA backend's bf16 kernels take this shape (head_dim 16..128
// in steps of 4, row_stride a multiple of 4 and >= heads * head_dim;
// cuda::PlanBf16Attention): the CPU backend rounds exactly where the GPU
// does, so it uses the bf16 attention for these shapes only and the fp32
// kernel otherwise, as the GPU does.
bool Bf16AttentionTakes(const AttentionShape& shape);

// Whether this CPU runs the products on the AVX-512 BF16 instructions.
bool Bf16AttentionUsesDotInstructions();

// Same arguments as AttentionForward / AttentionBackward (attention.h), any
// shape (the caller asks Bf16AttentionTakes to mirror the GPU's choice).
void AttentionForwardBf16(const AttentionShape& shape, const float* q, const float* k,
                          const float* v, float* out, float* lse);
void AttentionBackwardBf16(const AttentionShape& shape, const float* q, const float* k,
                           const float* v, const float* out, const float* dout, const float* lse,
                           float* dq, float* dk, float* dv);

namespace internal {
// Tests: run the portable products even where the instructions exist
// (false: the default choice again). Not thread-safe against running calls.
void ForcePortableBf16Attention(bool portable);
}  // namespace internal

}  // namespace tessera::cpu
