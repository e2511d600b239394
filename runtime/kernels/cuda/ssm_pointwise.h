// The Mamba-2 mixer's pointwise pieces on the GPU. Same semantics as
// runtime/kernels/cpu/ssm_pointwise.h; device pointers, queued on `stream`.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace tessera::cuda {

absl::Status DtSoftplusForward(const float* dt_raw, int64_t raw_stride, const float* bias,
                               float* dt, int64_t rows, int64_t heads, cudaStream_t stream);
absl::Status DtSoftplusBackward(const float* ddt, const float* dt_raw, int64_t raw_stride,
                                const float* bias, float* ddt_raw, float* dbias, int64_t rows,
                                int64_t heads, cudaStream_t stream);
absl::Status GatedRmsNormForward(const float* x, const float* z, int64_t z_stride,
                                 const float* weight, float* y, float* rstd, int64_t rows,
                                 int64_t dim, int64_t group_size, float eps, cudaStream_t stream);
absl::Status GatedRmsNormBackward(const float* dy, const float* x, const float* z,
                                  int64_t z_stride, const float* weight, const float* rstd,
                                  float* dx, float* dz, float* dweight, int64_t rows, int64_t dim,
                                  int64_t group_size, cudaStream_t stream);

// a[h] = -exp(a_log[h]); da_log[h] += da[h] * a[h].
absl::Status SsmDecayRatesForward(const float* a_log, float* a, int64_t heads,
                                  cudaStream_t stream);
absl::Status SsmDecayRatesBackward(const float* da, const float* a, float* da_log, int64_t heads,
                                   cudaStream_t stream);
// decay[b, h] = exp(A[h] * sum_t dt[b, t, h]), the sum in double in position
// order (one thread per (b, h)).
absl::Status SsdShardDecay(const float* dt, const float* A, float* decay, int64_t batch,
                           int64_t seq, int64_t heads, cudaStream_t stream);

}  // namespace tessera::cuda
