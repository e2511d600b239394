// Mixed-precision GEMM: inputs rounded to bf16, products accumulated and
// written in fp32 (oneDNN's matmul primitive, bf16 x bf16 -> f32).
//
// Same contract as Gemm/GemmBatched (gemm.h): row-major,
//   C[m, n] = alpha * op(A) @ op(B) + beta * C
// with A and B held in fp32 by the caller (master weights and activations);
// each call rounds them to bf16 (round to nearest even) into per-thread
// scratch, so only the multiply sees bf16. C stays fp32, so gradients still
// accumulate (beta = 1) in fp32.
#pragma once

#include <cstdint>
#include <string>

namespace tessera::cpu {

// Whether oneDNN runs a bf16 matmul on this CPU, and how: "native" (AVX-512
// BF16 or AMX instructions), "emulated" (AVX-512 without bf16 instructions:
// correct, usually slower than fp32), or "" with `why` filled when it cannot.
std::string Bf16GemmSupport(std::string* why);

void GemmBf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
              int64_t ldc);

void GemmBatchedBf16(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n, int64_t k,
                     float alpha, const float* a, int64_t lda, int64_t stride_a, const float* b,
                     int64_t ldb, int64_t stride_b, float beta, float* c, int64_t ldc,
                     int64_t stride_c);

// x rounded to the nearest bf16 value (ties to even), returned as fp32: what
// the bf16 GEMM multiplies. NaN stays NaN.
float RoundToBf16(float x);

}  // namespace tessera::cpu
