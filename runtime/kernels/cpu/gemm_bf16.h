// Mixed-precision GEMM: inputs rounded to bf16, products accumulated and
// written in fp32 (oneDNN's matmul primitive, bf16 x bf16 -> f32).
//
// Same contract as Gemm/GemmBatched (gemm.h): row-major,
//   C[m, n] = alpha * op(A) @ op(B) + beta * C
// with A and B held in fp32 by the caller (master weights and activations).
// An input given only in fp32 is rounded to bf16 (round to nearest even)
// into per-thread scratch on every call; an input that comes with its bf16
// copy (a16 / b16: RoundToBf16 of the same matrix, same leading dimension)
// is multiplied as it is, so a weight rounded once per optimizer step or an
// activation read by several GEMMs is not rounded again. Either way the
// product is the same, bit for bit. C stays fp32, so gradients still
// accumulate (beta = 1) in fp32.
#pragma once

#include <cstdint>
#include <string>

namespace tessera::cpu {

// Whether oneDNN runs a bf16 matmul on this CPU, and how: "native" (AVX-512
// BF16 or AMX instructions), "emulated" (AVX-512 without bf16 instructions:
// correct, usually slower than fp32), or "" with `why` filled when it cannot.
std::string Bf16GemmSupport(std::string* why);

// a16 / b16 may be null (then a / b are rounded here); when given, a / b are
// not read.
void GemmBf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float* a, const uint16_t* a16, int64_t lda, const float* b,
              const uint16_t* b16, int64_t ldb, float beta, float* c, int64_t ldc);

inline void GemmBf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                     const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                     float* c, int64_t ldc) {
  GemmBf16(trans_a, trans_b, m, n, k, alpha, a, nullptr, lda, b, nullptr, ldb, beta, c, ldc);
}

void GemmBatchedBf16(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n, int64_t k,
                     float alpha, const float* a, int64_t lda, int64_t stride_a, const float* b,
                     int64_t ldb, int64_t stride_b, float beta, float* c, int64_t ldc,
                     int64_t stride_c);

// x rounded to the nearest bf16 value (ties to even), returned as fp32: what
// the bf16 GEMM multiplies. NaN stays NaN.
float RoundToBf16(float x);

// y[i] = the bf16 bit pattern of x[i] rounded as RoundToBf16, i < n: the
// copies GemmBf16 accepts as a16 / b16 (a matrix's padding between rows is
// converted too and never read).
void RoundToBf16(const float* x, uint16_t* y, int64_t n);

}  // namespace tessera::cpu
