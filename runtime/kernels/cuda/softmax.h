// Row softmax over the last dimension of [rows, dim], on the GPU. Same
// semantics as runtime/kernels/cpu/softmax.h; device pointers, queued on
// `stream`.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace tessera::cuda {

absl::Status SoftmaxForward(const float* x, float* y, int64_t rows, int64_t dim,
                            cudaStream_t stream);
// dx = y * (dy - sum(dy * y)); dx overwritten.
absl::Status SoftmaxBackward(const float* dy, const float* y, float* dx, int64_t rows, int64_t dim,
                             cudaStream_t stream);

}  // namespace tessera::cuda
