// SSD recurrence kernels: a warp per (b, h, p), lane l holding state columns
// n = l, l + 32, ... of that row.
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda/ssd.h"

namespace tessera::cuda {
namespace {

using internal::kWarpSize;
using internal::WarpSum;

constexpr int kWarps = 8;
constexpr int kSlots = kMaxSsdStateDim / kWarpSize;

// Where warp (b, h, p) finds its operands at time t.
struct Row {
  SsdShape s;
  int64_t b, h, p, g;
  __device__ Row(const SsdShape& shape, int64_t row) : s(shape) {
    p = row % s.head_dim;
    h = (row / s.head_dim) % s.heads;
    b = row / (s.head_dim * s.heads);
    g = h / (s.heads / s.groups);
  }
  __device__ int64_t X(int64_t t) const { return ((b * s.seq + t) * s.heads + h) * s.head_dim + p; }
  __device__ int64_t Dt(int64_t t) const { return (b * s.seq + t) * s.heads + h; }
  __device__ int64_t Bc(int64_t t) const { return ((b * s.seq + t) * s.groups + g) * s.state_dim; }
  __device__ int64_t State() const { return ((b * s.heads + h) * s.head_dim + p) * s.state_dim; }
};

__device__ __forceinline__ int64_t WarpRow() {
  return int64_t{blockIdx.x} * kWarps + threadIdx.x / kWarpSize;
}

__global__ void ForwardKernel(SsdShape s, const float* __restrict__ x, const float* __restrict__ dt,
                              const float* __restrict__ A, const float* __restrict__ Bm,
                              const float* __restrict__ Cm, const float* __restrict__ D,
                              const float* __restrict__ initial_state, float* __restrict__ y,
                              float* __restrict__ final_state) {
  const int64_t row = WarpRow();
  if (row >= s.batch * s.heads * s.head_dim) return;
  const Row r(s, row);
  const int lane = threadIdx.x % kWarpSize;
  const int n_dim = static_cast<int>(s.state_dim);
  float state[kSlots];
#pragma unroll
  for (int c = 0; c < kSlots; ++c) {
    const int n = lane + c * kWarpSize;
    state[c] = (initial_state != nullptr && n < n_dim) ? initial_state[r.State() + n] : 0.0f;
  }
  const float a_h = A[r.h], d_h = D != nullptr ? D[r.h] : 0.0f;
  for (int64_t t = 0; t < s.seq; ++t) {
    const float dtv = dt[r.Dt(t)], xv = x[r.X(t)], decay = expf(dtv * a_h);
    float out = 0.0f;
#pragma unroll
    for (int c = 0; c < kSlots; ++c) {
      const int n = lane + c * kWarpSize;
      if (n < n_dim) {
        state[c] = decay * state[c] + dtv * xv * Bm[r.Bc(t) + n];
        out += state[c] * Cm[r.Bc(t) + n];
      }
    }
    out = WarpSum(out);
    if (lane == 0) y[r.X(t)] = out + d_h * xv;
  }
  if (final_state == nullptr) return;
#pragma unroll
  for (int c = 0; c < kSlots; ++c) {
    const int n = lane + c * kWarpSize;
    if (n < n_dim) final_state[r.State() + n] = state[c];
  }
}

struct Grads {
  float *dx, *ddt, *dA, *dB, *dC, *dD, *d_initial_state, *checkpoints;
};

// Checkpoint k of warp `row` holds the state before step k * kSsdCheckpoint.
__device__ float* Checkpoint(const SsdShape& s, float* base, int64_t row, int64_t k) {
  const int64_t chunks = (s.seq + kSsdCheckpoint - 1) / kSsdCheckpoint;
  return base + (row * chunks + k) * s.state_dim;
}

__global__ void BackwardKernel(SsdShape s, const float* __restrict__ x,
                               const float* __restrict__ dt, const float* __restrict__ A,
                               const float* __restrict__ Bm, const float* __restrict__ Cm,
                               const float* __restrict__ D, const float* __restrict__ initial_state,
                               const float* __restrict__ dy, const float* __restrict__ d_final,
                               Grads out) {
  const int64_t row = WarpRow();
  if (row >= s.batch * s.heads * s.head_dim) return;
  const Row r(s, row);
  const int lane = threadIdx.x % kWarpSize;
  const int n_dim = static_cast<int>(s.state_dim);
  const float a_h = A[r.h], d_h = D != nullptr ? D[r.h] : 0.0f;
  // Pass 1: the states at the checkpoints.
  float state[kSlots];
#pragma unroll
  for (int c = 0; c < kSlots; ++c) {
    const int n = lane + c * kWarpSize;
    state[c] = (initial_state != nullptr && n < n_dim) ? initial_state[r.State() + n] : 0.0f;
  }
  for (int64_t t = 0; t < s.seq; ++t) {
    if (t % kSsdCheckpoint == 0) {
      float* ck = Checkpoint(s, out.checkpoints, row, t / kSsdCheckpoint);
#pragma unroll
      for (int c = 0; c < kSlots; ++c) {
        if (lane + c * kWarpSize < n_dim) ck[lane + c * kWarpSize] = state[c];
      }
    }
    const float dtv = dt[r.Dt(t)], xv = x[r.X(t)], decay = expf(dtv * a_h);
#pragma unroll
    for (int c = 0; c < kSlots; ++c) {
      const int n = lane + c * kWarpSize;
      if (n < n_dim) state[c] = decay * state[c] + dtv * xv * Bm[r.Bc(t) + n];
    }
  }
  // Pass 2: backwards, chunk by chunk, g = dLoss/dstate_t.
  float g[kSlots];
#pragma unroll
  for (int c = 0; c < kSlots; ++c) {
    const int n = lane + c * kWarpSize;
    g[c] = (d_final != nullptr && n < n_dim) ? d_final[r.State() + n] : 0.0f;
  }
  float history[kSsdCheckpoint][kSlots];  // state before each step of the chunk
  float dA_sum = 0.0f, dD_sum = 0.0f;
  const int64_t chunks = (s.seq + kSsdCheckpoint - 1) / kSsdCheckpoint;
  for (int64_t k = chunks - 1; k >= 0; --k) {
    const int64_t t0 = k * kSsdCheckpoint, t1 = min(s.seq, t0 + kSsdCheckpoint);
    const float* ck = Checkpoint(s, out.checkpoints, row, k);
#pragma unroll
    for (int c = 0; c < kSlots; ++c) {
      state[c] = lane + c * kWarpSize < n_dim ? ck[lane + c * kWarpSize] : 0.0f;
    }
    for (int64_t t = t0; t < t1; ++t) {
      const float dtv = dt[r.Dt(t)], xv = x[r.X(t)], decay = expf(dtv * a_h);
#pragma unroll
      for (int c = 0; c < kSlots; ++c) {
        const int n = lane + c * kWarpSize;
        history[t - t0][c] = state[c];
        if (n < n_dim) state[c] = decay * state[c] + dtv * xv * Bm[r.Bc(t) + n];
      }
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const float dtv = dt[r.Dt(t)], xv = x[r.X(t)], decay = expf(dtv * a_h), dyv = dy[r.X(t)];
      float sum_gb = 0.0f, sum_gh = 0.0f;
#pragma unroll
      for (int c = 0; c < kSlots; ++c) {
        const int n = lane + c * kWarpSize;
        if (n >= n_dim) continue;
        const float prev = history[t - t0][c], bn = Bm[r.Bc(t) + n];
        const float now = decay * prev + dtv * xv * bn;
        g[c] += dyv * Cm[r.Bc(t) + n];
        atomicAdd(out.dC + r.Bc(t) + n, dyv * now);
        atomicAdd(out.dB + r.Bc(t) + n, g[c] * dtv * xv);
        sum_gb += g[c] * bn;
        sum_gh += g[c] * prev;
        g[c] *= decay;
      }
      sum_gb = WarpSum(sum_gb);
      sum_gh = WarpSum(sum_gh);
      if (lane == 0) {
        out.dx[r.X(t)] = dtv * sum_gb + d_h * dyv;
        atomicAdd(out.ddt + r.Dt(t), sum_gh * decay * a_h + xv * sum_gb);
        dA_sum += sum_gh * decay * dtv;
        dD_sum += dyv * xv;
      }
    }
  }
  if (lane == 0) {
    atomicAdd(out.dA + r.h, dA_sum);
    if (D != nullptr && out.dD != nullptr) atomicAdd(out.dD + r.h, dD_sum);
  }
  if (out.d_initial_state == nullptr) return;
#pragma unroll
  for (int c = 0; c < kSlots; ++c) {
    const int n = lane + c * kWarpSize;
    if (n < n_dim) out.d_initial_state[r.State() + n] = g[c];
  }
}

// One token: x, y [B, H, P]; dt [B, H]; B, C [B, G, N] (seq = 1 layouts).
__global__ void StepKernel(SsdShape s, const float* __restrict__ x, const float* __restrict__ dt,
                           const float* __restrict__ A, const float* __restrict__ Bm,
                           const float* __restrict__ Cm, const float* __restrict__ D,
                           float* __restrict__ state, float* __restrict__ y) {
  const int64_t row = WarpRow();
  if (row >= s.batch * s.heads * s.head_dim) return;
  s.seq = 1;
  const Row r(s, row);
  const int lane = threadIdx.x % kWarpSize;
  const float dtv = dt[r.Dt(0)], xv = x[r.X(0)], decay = expf(dtv * A[r.h]);
  float out = 0.0f;
  for (int64_t n = lane; n < s.state_dim; n += kWarpSize) {
    const float v = decay * state[r.State() + n] + dtv * xv * Bm[r.Bc(0) + n];
    state[r.State() + n] = v;
    out += v * Cm[r.Bc(0) + n];
  }
  out = WarpSum(out);
  if (lane == 0) y[r.X(0)] = out + (D != nullptr ? D[r.h] : 0.0f) * xv;
}

absl::Status CheckShape(const char* name, const SsdShape& s) {
  if (s.batch < 0 || s.seq < 0 || s.heads < 0 || s.head_dim < 0 || s.groups <= 0 ||
      s.heads % s.groups != 0 || s.state_dim < 0 || s.state_dim > kMaxSsdStateDim) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::%s: unsupported shape batch=%d seq=%d heads=%d head_dim=%d groups=%d "
        "state_dim=%d (at most %d)",
        name, s.batch, s.seq, s.heads, s.head_dim, s.groups, s.state_dim, kMaxSsdStateDim));
  }
  return absl::OkStatus();
}

unsigned WarpBlocks(const SsdShape& s) {
  return static_cast<unsigned>((s.batch * s.heads * s.head_dim + kWarps - 1) / kWarps);
}

}  // namespace

absl::Status SsdScanForward(const SsdShape& s, const float* x, const float* dt, const float* A,
                            const float* B, const float* C, const float* D,
                            const float* initial_state, float* y, float* final_state,
                            cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(CheckShape("SsdScanForward", s));
  if (s.batch * s.heads * s.head_dim == 0) return absl::OkStatus();
  ForwardKernel<<<WarpBlocks(s), kWarps * kWarpSize, 0, stream>>>(s, x, dt, A, B, C, D,
                                                                  initial_state, y, final_state);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status SsdScanBackward(const SsdShape& s, const float* x, const float* dt, const float* A,
                             const float* B, const float* C, const float* D,
                             const float* initial_state, const float* dy,
                             const float* d_final_state, float* dx, float* ddt, float* dA,
                             float* dB, float* dC, float* dD, float* d_initial_state,
                             float* scratch, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(CheckShape("SsdScanBackward", s));
  // ddt, dB, dC are overwritten: zero them, then every warp adds its share.
  TESSERA_CUDA(cudaMemsetAsync(ddt, 0, sizeof(float) * s.batch * s.seq * s.heads, stream));
  const size_t bc_bytes = sizeof(float) * s.batch * s.seq * s.groups * s.state_dim;
  TESSERA_CUDA(cudaMemsetAsync(dB, 0, bc_bytes, stream));
  TESSERA_CUDA(cudaMemsetAsync(dC, 0, bc_bytes, stream));
  if (s.batch * s.heads * s.head_dim == 0) return absl::OkStatus();
  const Grads grads{dx, ddt, dA, dB, dC, dD, d_initial_state, scratch};
  BackwardKernel<<<WarpBlocks(s), kWarps * kWarpSize, 0, stream>>>(
      s, x, dt, A, B, C, D, initial_state, dy, d_final_state, grads);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status SsdStep(const SsdShape& s, const float* x, const float* dt, const float* A,
                     const float* B, const float* C, const float* D, float* state, float* y,
                     cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(CheckShape("SsdStep", s));
  if (s.batch * s.heads * s.head_dim == 0) return absl::OkStatus();
  StepKernel<<<WarpBlocks(s), kWarps * kWarpSize, 0, stream>>>(s, x, dt, A, B, C, D, state, y);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

}  // namespace tessera::cuda
