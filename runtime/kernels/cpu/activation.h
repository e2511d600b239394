// Elementwise activations. Backward kernels overwrite dx.
#pragma once

#include <cstdint>

namespace tessera::cpu {

// silu(x) = x * sigmoid(x)
void SiluForward(const float* x, float* y, int64_t n);
void SiluBackward(const float* dy, const float* x, float* dx, int64_t n);

// GELU, tanh approximation (as DiT's approx_gelu):
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
void GeluForward(const float* x, float* y, int64_t n);
void GeluBackward(const float* dy, const float* x, float* dx, int64_t n);

// SwiGLU on a fused projection: x is [rows, 2*hidden] with row r holding
// [gate_r (hidden) | up_r (hidden)]; y[rows, hidden] = silu(gate) * up.
// dx is [rows, 2*hidden], overwritten.
void SwigluForward(const float* x, float* y, int64_t rows, int64_t hidden);
void SwigluBackward(const float* dy, const float* x, float* dx, int64_t rows, int64_t hidden);

// Squared ReLU (the MLP of the Mamba hybrid and Primer): y = max(x, 0)^2;
// dx = 2 max(x, 0) dy, overwritten.
void ReluSquaredForward(const float* x, float* y, int64_t n);
void ReluSquaredBackward(const float* dy, const float* x, float* dx, int64_t n);

// y += x (n elements)
void AddInPlace(float* y, const float* x, int64_t n);
// y[r, :] += bias[:] for r < rows
void AddBiasRows(float* y, const float* bias, int64_t rows, int64_t dim);
// dbias[:] += sum_r dy[r, :]
void SumRowsAccumulate(const float* dy, float* dbias, int64_t rows, int64_t dim);
// y[r, :] += scale[r] * x[r, :] for r < rows
void AddScaledRows(float* y, const float* scale, const float* x, int64_t rows, int64_t dim);

}  // namespace tessera::cpu
