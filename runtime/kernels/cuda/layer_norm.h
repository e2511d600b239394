// LayerNorm and RMSNorm over the last dimension of [rows, dim], on the GPU.
// Same semantics as runtime/kernels/cpu/layer_norm.h; all pointers are device
// pointers and the work is queued on `stream`.
//
// Backward conventions (as on the CPU): dx is OVERWRITTEN; dgamma and dbeta
// are ACCUMULATED (+=). The parameter gradients are reduced over rows in a
// fixed order (no atomics), so they are bit-for-bit deterministic run to run.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace tessera::cuda {

// y = (x - mean) * rstd [* gamma + beta]. gamma/beta may be null (no affine).
// mean/rstd: [rows], saved for backward.
absl::Status LayerNormForward(const float* x, const float* gamma, const float* beta, float* y,
                              float* mean, float* rstd, int64_t rows, int64_t dim, float eps,
                              cudaStream_t stream);
// dgamma/dbeta may be null when gamma/beta were null.
absl::Status LayerNormBackward(const float* dy, const float* x, const float* gamma,
                               const float* mean, const float* rstd, float* dx, float* dgamma,
                               float* dbeta, int64_t rows, int64_t dim, cudaStream_t stream);

// y = x * rstd * gamma, rstd = 1/sqrt(mean(x^2) + eps). gamma may be null.
// adaLN's affine-free LayerNorm and modulation in one pass (the CPU
// kernel's contract, runtime/kernels/cpu/layer_norm.h).
absl::Status LayerNormModulateForward(const float* x, const float* shift, const float* scale,
                                      float* y, float* mean, float* rstd, int64_t batch,
                                      int64_t seq, int64_t dim, int64_t cond_stride, float eps,
                                      cudaStream_t stream);
absl::Status LayerNormModulateBackward(const float* dy, const float* x, const float* mean,
                                       const float* rstd, const float* scale, float* dx,
                                       float* dshift, float* dscale, int64_t batch, int64_t seq,
                                       int64_t dim, int64_t cond_stride, cudaStream_t stream);
absl::Status RmsNormForward(const float* x, const float* gamma, float* y, float* rstd, int64_t rows,
                            int64_t dim, float eps, cudaStream_t stream);
absl::Status RmsNormBackward(const float* dy, const float* x, const float* gamma, const float* rstd,
                             float* dx, float* dgamma, int64_t rows, int64_t dim,
                             cudaStream_t stream);

}  // namespace tessera::cuda
