// adaLN pieces of DiT on the GPU; the semantics of
// runtime/kernels/cpu/modulate.h (x, y: [B, S, D]; shift, scale, gate rows of
// D, sample b's row at b * cond_stride).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace tessera::cuda {

absl::Status ModulateForward(const float* x, const float* shift, const float* scale, float* y,
                             int64_t batch, int64_t seq, int64_t dim, int64_t cond_stride,
                             cudaStream_t stream);
absl::Status ModulateBackward(const float* dy, const float* x, const float* scale, float* dx,
                              float* dshift, float* dscale, int64_t batch, int64_t seq,
                              int64_t dim, int64_t cond_stride, cudaStream_t stream);
absl::Status GatedResidualForward(float* residual, const float* y, const float* gate,
                                  int64_t batch, int64_t seq, int64_t dim, int64_t cond_stride,
                                  cudaStream_t stream);
absl::Status GatedResidualBackward(const float* dresidual, const float* y, const float* gate,
                                   float* dy, float* dgate, int64_t batch, int64_t seq,
                                   int64_t dim, int64_t cond_stride, cudaStream_t stream);

}  // namespace tessera::cuda
