// The Mamba-2 SSD scan on the GPU; the semantics and layouts of
// runtime/kernels/cpu/ssd.h (x, y [B, L, H, P]; dt [B, L, H]; A, D [H];
// B, C [B, L, G, N]; states [B, H, P, N]).
//
// This is the recurrence itself, not the chunked matrix form: one warp per
// (batch, head, head-dim row p) walks the sequence with the N state values of
// that row in its lanes (N <= 256). The backward pass recomputes the states
// from checkpoints taken every kSsdCheckpoint steps and accumulates dB, dC,
// ddt, dA, dD with atomic adds (so their last bits vary from run to run).
// Correct and memory-light, but not tuned: the tensor-core chunked scan is
// not written yet.
#pragma once

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "runtime/kernels/kernel_args.h"

namespace tessera::cuda {

inline constexpr int64_t kMaxSsdStateDim = 256;
inline constexpr int64_t kSsdCheckpoint = 32;

absl::Status SsdScanForward(const SsdShape& shape, const float* x, const float* dt, const float* A,
                            const float* B, const float* C, const float* D,
                            const float* initial_state, float* y, float* final_state,
                            cudaStream_t stream);

// Floats of device scratch SsdScanBackward needs (the state checkpoints).
inline int64_t SsdScanBackwardScratch(const SsdShape& s) {
  return s.batch * s.heads * s.head_dim * s.state_dim * ((s.seq + kSsdCheckpoint - 1) / kSsdCheckpoint);
}
absl::Status SsdScanBackward(const SsdShape& shape, const float* x, const float* dt,
                             const float* A, const float* B, const float* C, const float* D,
                             const float* initial_state, const float* dy,
                             const float* d_final_state, float* dx, float* ddt, float* dA,
                             float* dB, float* dC, float* dD, float* d_initial_state,
                             float* scratch, cudaStream_t stream);

absl::Status SsdStep(const SsdShape& shape, const float* x, const float* dt, const float* A,
                     const float* B, const float* C, const float* D, float* state, float* y,
                     cudaStream_t stream);

}  // namespace tessera::cuda
