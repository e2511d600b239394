// Elementwise activations on the GPU. Same semantics as
// runtime/kernels/cpu/activation.h; device pointers, queued on `stream`.
// Backward kernels overwrite dx; SumRowsAccumulate accumulates.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace tessera::cuda {

// silu(x) = x * sigmoid(x)
absl::Status SiluForward(const float* x, float* y, int64_t n, cudaStream_t stream);
absl::Status SiluBackward(const float* dy, const float* x, float* dx, int64_t n,
                          cudaStream_t stream);

// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
absl::Status GeluForward(const float* x, float* y, int64_t n, cudaStream_t stream);
absl::Status GeluBackward(const float* dy, const float* x, float* dx, int64_t n,
                          cudaStream_t stream);

// SwiGLU on a fused projection: x is [rows, 2*hidden] with row r holding
// [gate_r (hidden) | up_r (hidden)]; y[rows, hidden] = silu(gate) * up.
// dx is [rows, 2*hidden], overwritten.
absl::Status SwigluForward(const float* x, float* y, int64_t rows, int64_t hidden,
                           cudaStream_t stream);
absl::Status SwigluBackward(const float* dy, const float* x, float* dx, int64_t rows,
                            int64_t hidden, cudaStream_t stream);

// Squared ReLU: y = max(x, 0)^2; dx = 2 max(x, 0) dy (overwritten).
absl::Status ReluSquaredForward(const float* x, float* y, int64_t n, cudaStream_t stream);
absl::Status ReluSquaredBackward(const float* dy, const float* x, float* dx, int64_t n,
                                 cudaStream_t stream);

// y += x (n elements)
absl::Status AddInPlace(float* y, const float* x, int64_t n, cudaStream_t stream);
// y[r, :] += bias[:] for r < rows
absl::Status AddBiasRows(float* y, const float* bias, int64_t rows, int64_t dim,
                         cudaStream_t stream);
// dbias[:] += sum_r dy[r, :], summed in a fixed order (deterministic).
absl::Status SumRowsAccumulate(const float* dy, float* dbias, int64_t rows, int64_t dim,
                               cudaStream_t stream);
// y[r, :] += scale[r] * x[r, :] for r < rows
absl::Status AddScaledRows(float* y, const float* scale, const float* x, int64_t rows,
                           int64_t dim, cudaStream_t stream);

}  // namespace tessera::cuda
