// Depthwise causal conv1d on the GPU; the semantics and layouts of
// runtime/kernels/cpu/causal_conv1d.h (channels-last x, y [B, L, C];
// weight [C, K]; halo, state [B, K-1, C]).
#pragma once

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "runtime/kernels/kernel_args.h"

namespace tessera::cuda {

absl::Status CausalConv1dForward(const CausalConv1dShape& shape, const float* x,
                                 const float* weight, const float* bias, const float* halo,
                                 float* y, float* halo_out, cudaStream_t stream);
absl::Status CausalConv1dBackward(const CausalConv1dShape& shape, const float* x,
                                  const float* weight, const float* halo, const float* dy,
                                  float* dx, float* dweight, float* dbias, float* dhalo,
                                  cudaStream_t stream);
absl::Status CausalConv1dStep(const CausalConv1dShape& shape, const float* x, const float* weight,
                              const float* bias, float* state, float* y, cudaStream_t stream);

}  // namespace tessera::cuda
