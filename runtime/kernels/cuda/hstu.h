// HSTU pointwise attention on jagged batches, on the GPU; the semantics and
// layouts of runtime/kernels/cpu/hstu.h (docs/hstu.md). Tiled like
// attention.cu: one warp per query (forward, dQ) or key (dK, dV) of one user
// and head, 32-row tiles in shared memory, the relative bias recomputed
// wherever it is needed. qk_dim, v_dim <= 256.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace tessera::cuda {

inline constexpr int64_t kMaxHstuDim = 256;

struct HstuArgs {
  const int64_t* offsets = nullptr;  // [users + 1]
  int64_t users = 0, max_len = 0, heads = 0, qk_dim = 0, v_dim = 0;
  int64_t qk_stride = 0, v_stride = 0;
  const float* pos_bias = nullptr;   // [2 max_len - 1] or null
  const float* time_bias = nullptr;  // [num_buckets + 1] or null
  int32_t num_buckets = 0;
  const int64_t* timestamps = nullptr;
  const int64_t* query_timestamps = nullptr;
};

absl::Status HstuQueryTimestamps(const int64_t* offsets, int64_t users, const int64_t* timestamps,
                                 const int64_t* next_timestamps, int64_t* query_timestamps,
                                 cudaStream_t stream);
absl::Status HstuAttentionForward(const HstuArgs& args, const float* q, const float* k,
                                  const float* v, float* out, cudaStream_t stream);
// dq, dk, dv overwritten; dpos_bias, dtime_bias (null when their bias is) accumulate.
absl::Status HstuAttentionBackward(const HstuArgs& args, const float* q, const float* k,
                                   const float* v, const float* dout, float* dq, float* dk,
                                   float* dv, float* dpos_bias, float* dtime_bias,
                                   cudaStream_t stream);
absl::Status HstuNormGateForward(const float* x, const float* u, int64_t u_stride, float* y,
                                 float* mean, float* rstd, int64_t rows, int64_t dim, float eps,
                                 cudaStream_t stream);
absl::Status HstuNormGateBackward(const float* dy, const float* x, const float* u,
                                  int64_t u_stride, const float* mean, const float* rstd,
                                  float* dx, float* du, int64_t rows, int64_t dim,
                                  cudaStream_t stream);

// The split-row norm-gate of runtime/kernels/cpu/hstu.h, one warp per row.
absl::Status HstuNormGateSums(const float* x, int64_t rows, int64_t dim, const float* mean,
                        float* out,
    cudaStream_t stream);
absl::Status HstuNormGateApply(const float* x, const float* u, int64_t u_stride, const float* mean,
                         const float* squares, int64_t count, float eps, float* y, float* rstd,
                         int64_t rows, int64_t dim,
    cudaStream_t stream);
absl::Status HstuNormGateBackwardSums(const float* dy, const float* x, const float* u,
                                int64_t u_stride, const float* mean, const float* rstd,
                                int64_t rows, int64_t dim, float* sums,
    cudaStream_t stream);
absl::Status HstuNormGateBackwardApply(const float* dy, const float* x, const float* u,
                                 int64_t u_stride, const float* mean, const float* rstd,
                                 const float* sums, int64_t count, float* dx, float* du,
                                 int64_t rows, int64_t dim,
    cudaStream_t stream);

}  // namespace tessera::cuda
