// Tiled attention with an online softmax (FlashAttention-2's schedule on fp32
// CUDA cores). Each warp owns one row (a query in the forward and dQ kernels,
// a key in the dK/dV kernel); lane j of the warp scores row j of the 32-row
// tile in shared memory, so a tile costs no shuffles for the dot products,
// and each lane accumulates head_dim/32 columns of the output row.
#include <cmath>

#include "runtime/kernels/cuda/attention.h"
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/common.cuh"

namespace tessera::cuda {
namespace {

using internal::kWarpSize;
using internal::WarpMax;
using internal::WarpSum;

constexpr int kTile = 32;                                   // rows staged per tile
constexpr int kForwardWarps = 16;                           // query rows per forward block
constexpr int kBackwardWarps = 8;                           // rows per backward block
constexpr int kColumns = kMaxAttentionHeadDim / kWarpSize;  // columns a lane accumulates

// Element (b, s, h, d) of a token-major operand.
__device__ __forceinline__ int64_t At(const AttentionShape& a, int64_t b, int64_t s, int64_t h,
                                      int64_t stride) {
  return (b * a.seq + s) * stride + h * a.head_dim;
}

__device__ __forceinline__ float Dot(const float* x, const float* y, int n) {
  float sum = 0.0f;
  for (int d = 0; d < n; ++d) sum += x[d] * y[d];
  return sum;
}

// Rows [row0, row0 + kTile) of (b, h) of `src` into `dst` ([kTile, ld]); zeros past seq.
__device__ void LoadTile(const AttentionShape& a, const float* src, int64_t b, int64_t h,
                         int64_t row0, float* dst, int ld) {
  const int dh = static_cast<int>(a.head_dim);
  for (int e = threadIdx.x; e < kTile * dh; e += blockDim.x) {
    const int r = e / dh, d = e % dh;
    const int64_t s = row0 + r;
    dst[r * ld + d] = s < a.seq ? src[At(a, b, s, h, a.row_stride) + d] : 0.0f;
  }
}

// grid (B*H, ceil(S / kForwardWarps)). Shared: K, V tiles [kTile, dh+1], q rows [warps, dh].
__global__ void ForwardKernel(AttentionShape a, const float* __restrict__ q,
                              const float* __restrict__ k, const float* __restrict__ v,
                              float* __restrict__ out, float* __restrict__ lse, float scale) {
  extern __shared__ float smem[];
  const int dh = static_cast<int>(a.head_dim), ld = dh + 1;
  float* ks = smem;
  float* vs = ks + kTile * ld;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* qs = vs + kTile * ld + warp * dh;
  const int64_t b = blockIdx.x / a.heads, h = blockIdx.x % a.heads;
  const int64_t q0 = int64_t{blockIdx.y} * kForwardWarps, i = q0 + warp;
  const bool active = i < a.seq;
  for (int d = lane; d < dh; d += kWarpSize) {
    qs[d] = active ? q[At(a, b, i, h, a.row_stride) + d] * scale : 0.0f;
  }
  float m = -INFINITY, l = 0.0f, acc[kColumns] = {};
  const int64_t key_end = a.causal ? min(a.seq, q0 + kForwardWarps) : a.seq;
  for (int64_t k0 = 0; k0 < key_end; k0 += kTile) {
    __syncthreads();
    LoadTile(a, k, b, h, k0, ks, ld);
    LoadTile(a, v, b, h, k0, vs, ld);
    __syncthreads();
    if (!active) continue;
    const int64_t j = k0 + lane;
    const bool visible = j < a.seq && (!a.causal || j <= i);
    const float score = visible ? Dot(qs, ks + lane * ld, dh) : -INFINITY;
    const float m_new = fmaxf(m, WarpMax(score));
    if (m_new == -INFINITY) continue;
    const float correction = expf(m - m_new);
    const float p = visible ? expf(score - m_new) : 0.0f;
    l = l * correction + WarpSum(p);
#pragma unroll
    for (int c = 0; c < kColumns; ++c) acc[c] *= correction;
    for (int r = 0; r < kTile; ++r) {
      const float pr = __shfl_sync(0xffffffffu, p, r);
      if (pr == 0.0f) continue;
#pragma unroll
      for (int c = 0; c < kColumns; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < dh) acc[c] += pr * vs[r * ld + d];
      }
    }
    m = m_new;
  }
  if (!active) return;
  const int64_t row = At(a, b, i, h, a.heads * a.head_dim);
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    const int d = lane + c * kWarpSize;
    if (d < dh) out[row + d] = acc[c] / l;
  }
  if (lane == 0) lse[(b * a.heads + h) * a.seq + i] = m + logf(l);
}

// delta[b, h, i] = dO_i . O_i  (one warp per row).
__global__ void DeltaKernel(AttentionShape a, const float* __restrict__ out,
                            const float* __restrict__ dout, float* __restrict__ delta) {
  const int64_t row = int64_t{blockIdx.x} * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= a.batch * a.heads * a.seq) return;
  const int64_t i = row % a.seq, bh = row / a.seq, b = bh / a.heads, h = bh % a.heads;
  const int64_t at = At(a, b, i, h, a.heads * a.head_dim);
  float sum = 0.0f;
  for (int64_t d = lane; d < a.head_dim; d += kWarpSize) sum += out[at + d] * dout[at + d];
  sum = WarpSum(sum);
  if (lane == 0) delta[row] = sum;
}

// dK, dV: grid (B*H, ceil(S / kBackwardWarps)), one warp per key. Shared: Q and
// dO tiles [kTile, dh+1]; k and v rows [warps, dh] each.
__global__ void KeyValueGradKernel(AttentionShape a, const float* __restrict__ q,
                                   const float* __restrict__ k, const float* __restrict__ v,
                                   const float* __restrict__ dout, const float* __restrict__ lse,
                                   const float* __restrict__ delta, float* __restrict__ dk,
                                   float* __restrict__ dv, float scale) {
  extern __shared__ float smem[];
  const int dh = static_cast<int>(a.head_dim), ld = dh + 1, od = static_cast<int>(a.heads * dh);
  float* qs = smem;
  float* dos = qs + kTile * ld;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* kj = dos + kTile * ld + warp * 2 * dh;
  float* vj = kj + dh;
  const int64_t b = blockIdx.x / a.heads, h = blockIdx.x % a.heads, bh = blockIdx.x;
  const int64_t j0 = int64_t{blockIdx.y} * kBackwardWarps, j = j0 + warp;
  const bool active = j < a.seq;
  for (int d = lane; d < dh; d += kWarpSize) {
    kj[d] = active ? k[At(a, b, j, h, a.row_stride) + d] : 0.0f;
    vj[d] = active ? v[At(a, b, j, h, a.row_stride) + d] : 0.0f;
  }
  float dk_acc[kColumns] = {}, dv_acc[kColumns] = {};
  const int64_t first = a.causal ? j0 / kTile * kTile : 0;
  for (int64_t i0 = first; i0 < a.seq; i0 += kTile) {
    __syncthreads();
    LoadTile(a, q, b, h, i0, qs, ld);
    for (int e = threadIdx.x; e < kTile * dh; e += blockDim.x) {
      const int r = e / dh, d = e % dh;
      dos[r * ld + d] = i0 + r < a.seq ? dout[At(a, b, i0 + r, h, od) + d] : 0.0f;
    }
    __syncthreads();
    if (!active) continue;
    const int64_t i = i0 + lane;
    const bool visible = i < a.seq && (!a.causal || j <= i);
    float p = 0.0f, ds = 0.0f;
    if (visible) {
      p = expf(scale * Dot(qs + lane * ld, kj, dh) - lse[bh * a.seq + i]);
      ds = p * (Dot(dos + lane * ld, vj, dh) - delta[bh * a.seq + i]);
    }
    for (int r = 0; r < kTile; ++r) {
      const float pr = __shfl_sync(0xffffffffu, p, r), dsr = __shfl_sync(0xffffffffu, ds, r);
#pragma unroll
      for (int c = 0; c < kColumns; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < dh) {
          dv_acc[c] += pr * dos[r * ld + d];
          dk_acc[c] += dsr * qs[r * ld + d];
        }
      }
    }
  }
  if (!active) return;
  const int64_t row = At(a, b, j, h, a.row_stride);
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    const int d = lane + c * kWarpSize;
    if (d < dh) {
      dk[row + d] = scale * dk_acc[c];
      dv[row + d] = dv_acc[c];
    }
  }
}

// dQ: grid (B*H, ceil(S / kBackwardWarps)), one warp per query. Shared: K and V
// tiles [kTile, dh+1]; q and dO rows [warps, dh] each.
__global__ void QueryGradKernel(AttentionShape a, const float* __restrict__ q,
                                const float* __restrict__ k, const float* __restrict__ v,
                                const float* __restrict__ dout, const float* __restrict__ lse,
                                const float* __restrict__ delta, float* __restrict__ dq,
                                float scale) {
  extern __shared__ float smem[];
  const int dh = static_cast<int>(a.head_dim), ld = dh + 1, od = static_cast<int>(a.heads * dh);
  float* ks = smem;
  float* vs = ks + kTile * ld;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* qi = vs + kTile * ld + warp * 2 * dh;
  float* doi = qi + dh;
  const int64_t b = blockIdx.x / a.heads, h = blockIdx.x % a.heads, bh = blockIdx.x;
  const int64_t i0 = int64_t{blockIdx.y} * kBackwardWarps, i = i0 + warp;
  const bool active = i < a.seq;
  for (int d = lane; d < dh; d += kWarpSize) {
    qi[d] = active ? q[At(a, b, i, h, a.row_stride) + d] : 0.0f;
    doi[d] = active ? dout[At(a, b, i, h, od) + d] : 0.0f;
  }
  const float lse_i = active ? lse[bh * a.seq + i] : 0.0f;
  const float delta_i = active ? delta[bh * a.seq + i] : 0.0f;
  float acc[kColumns] = {};
  const int64_t key_end = a.causal ? min(a.seq, i0 + kBackwardWarps) : a.seq;
  for (int64_t k0 = 0; k0 < key_end; k0 += kTile) {
    __syncthreads();
    LoadTile(a, k, b, h, k0, ks, ld);
    LoadTile(a, v, b, h, k0, vs, ld);
    __syncthreads();
    if (!active) continue;
    const int64_t j = k0 + lane;
    float ds = 0.0f;
    if (j < a.seq && (!a.causal || j <= i)) {
      const float p = expf(scale * Dot(qi, ks + lane * ld, dh) - lse_i);
      ds = p * (Dot(doi, vs + lane * ld, dh) - delta_i);
    }
    for (int r = 0; r < kTile; ++r) {
      const float dsr = __shfl_sync(0xffffffffu, ds, r);
#pragma unroll
      for (int c = 0; c < kColumns; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < dh) acc[c] += dsr * ks[r * ld + d];
      }
    }
  }
  if (!active) return;
  const int64_t row = At(a, b, i, h, a.row_stride);
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    const int d = lane + c * kWarpSize;
    if (d < dh) dq[row + d] = scale * acc[c];
  }
}

absl::Status CheckShape(const char* name, const AttentionShape& a) {
  if (a.batch < 0 || a.seq < 0 || a.heads < 0 || a.head_dim < 0 ||
      a.head_dim > kMaxAttentionHeadDim || a.row_stride < a.heads * a.head_dim ||
      a.batch * a.heads > INT32_MAX / 2 || a.seq > int64_t{65535} * kBackwardWarps) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::%s: unsupported shape batch=%d seq=%d heads=%d head_dim=%d (at most %d) "
        "row_stride=%d",
        name, a.batch, a.seq, a.heads, a.head_dim, kMaxAttentionHeadDim, a.row_stride));
  }
  return absl::OkStatus();
}

// Launches `kernel` with `smem_bytes` of dynamic shared memory (opting in past 48 KiB).
template <typename Kernel, typename... Args>
absl::Status Launch(Kernel kernel, dim3 grid, int threads, size_t smem_bytes, cudaStream_t stream,
                    Args... args) {
  if (smem_bytes > 48 * 1024) {
    TESSERA_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem_bytes)));
  }
  kernel<<<grid, threads, smem_bytes, stream>>>(args...);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

dim3 Grid(const AttentionShape& a, int rows_per_block) {
  return dim3(static_cast<unsigned>(a.batch * a.heads),
              static_cast<unsigned>((a.seq + rows_per_block - 1) / rows_per_block));
}

}  // namespace

absl::Status AttentionForward(const AttentionShape& a, const float* q, const float* k,
                              const float* v, float* out, float* lse, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(CheckShape("AttentionForward", a));
  if (a.batch * a.heads * a.seq == 0 || a.head_dim == 0) return absl::OkStatus();
  const float scale = 1.0f / std::sqrt(static_cast<float>(a.head_dim));
  const size_t smem = sizeof(float) * (2 * kTile * (a.head_dim + 1) + kForwardWarps * a.head_dim);
  return Launch(ForwardKernel, Grid(a, kForwardWarps), kForwardWarps * kWarpSize, smem, stream, a,
                q, k, v, out, lse, scale);
}

absl::Status AttentionBackward(const AttentionShape& a, const float* q, const float* k,
                               const float* v, const float* out, const float* dout,
                               const float* lse, float* dq, float* dk, float* dv, float* scratch,
                               cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(CheckShape("AttentionBackward", a));
  if (a.batch * a.heads * a.seq == 0 || a.head_dim == 0) return absl::OkStatus();
  const float scale = 1.0f / std::sqrt(static_cast<float>(a.head_dim));
  const int64_t rows = a.batch * a.heads * a.seq;
  constexpr int kDeltaWarps = 8;
  DeltaKernel<<<static_cast<unsigned>((rows + kDeltaWarps - 1) / kDeltaWarps),
                kDeltaWarps * kWarpSize, 0, stream>>>(a, out, dout, scratch);
  TESSERA_CUDA_LAUNCH();
  const size_t smem =
      sizeof(float) * (2 * kTile * (a.head_dim + 1) + 2 * kBackwardWarps * a.head_dim);
  TESSERA_RETURN_IF_ERROR(Launch(KeyValueGradKernel, Grid(a, kBackwardWarps),
                                 kBackwardWarps * kWarpSize, smem, stream, a, q, k, v, dout, lse,
                                 static_cast<const float*>(scratch), dk, dv, scale));
  return Launch(QueryGradKernel, Grid(a, kBackwardWarps), kBackwardWarps * kWarpSize, smem, stream,
                a, q, k, v, dout, lse, static_cast<const float*>(scratch), dq, scale);
}

}  // namespace tessera::cuda
