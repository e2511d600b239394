// Fused multi-head attention on the GPU, softmax(Q K^T / sqrt(d)) V, in the
// FlashAttention manner: no [S, S] matrix in memory, an online softmax over
// key tiles in the forward pass, and a backward pass that recomputes the
// probabilities from the saved log-sum-exp. Same layouts and semantics as
// runtime/kernels/cpu/attention.h (token-major, rows `row_stride` apart;
// out [B, S, H*Dh] contiguous; lse [B, H, S]; dq, dk, dv overwritten).
//
// fp32 CUDA cores, one warp per query (forward, dQ) or key (dK, dV) row,
// key/query tiles of 32 rows staged in shared memory; head_dim <= 256.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/kernels/kernel_args.h"

namespace tessera::cuda {

inline constexpr int64_t kMaxAttentionHeadDim = 256;

absl::Status AttentionForward(const AttentionShape& shape, const float* q, const float* k,
                              const float* v, float* out, float* lse, cudaStream_t stream);

// Floats of device scratch AttentionBackward needs (the per-row dO . O).
inline int64_t AttentionBackwardScratch(const AttentionShape& shape) {
  return shape.batch * shape.heads * shape.seq;
}
absl::Status AttentionBackward(const AttentionShape& shape, const float* q, const float* k,
                               const float* v, const float* out, const float* dout,
                               const float* lse, float* dq, float* dk, float* dv, float* scratch,
                               cudaStream_t stream);

}  // namespace tessera::cuda
