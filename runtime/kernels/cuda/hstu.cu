// HSTU attention kernels. The grid is (users * heads, query or key tiles of
// kWarps rows); blocks past a user's length return at once, so a jagged
// batch costs what its tokens cost. The bias gradients are summed per block
// in shared memory and added to global memory once per block (atomics: their
// order, and so the last bits, vary from run to run).
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda/hstu.h"

namespace tessera::cuda {
namespace {

using internal::kRowsPerBlock;
using internal::kWarpSize;
using internal::LaunchFlat;
using internal::WarpSum;

constexpr int kTile = 32;
constexpr int kWarps = 8;
constexpr int kColumns = kMaxHstuDim / kWarpSize;

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// The reference's bucket: floor(log(float(max(|dt|, 1))) / 0.301) clamped.
__device__ int32_t TimeBucket(int64_t delta_t, int32_t num_buckets) {
  const uint64_t magnitude = delta_t < 0 ? uint64_t{0} - static_cast<uint64_t>(delta_t)
                                         : static_cast<uint64_t>(delta_t);
  const float x = static_cast<float>(magnitude > 1 ? magnitude : uint64_t{1});
  const float bucket = logf(x) / 0.301f;
  return static_cast<int32_t>(fminf(bucket, static_cast<float>(num_buckets)));
}

// rab for global query token gi (local i) and key gj (local j); *bucket = its time bucket.
__device__ float Rab(const HstuArgs& a, int64_t gi, int64_t i, int64_t gj, int64_t j,
                     int32_t* bucket) {
  float rab = 0.0f;
  if (a.pos_bias != nullptr) rab += a.pos_bias[a.max_len - 1 + j - i];
  *bucket = 0;
  if (a.time_bias != nullptr) {
    *bucket = TimeBucket(a.query_timestamps[gi] - a.timestamps[gj], a.num_buckets);
    rab += a.time_bias[*bucket];
  }
  return rab;
}

__device__ __forceinline__ float Dot(const float* x, const float* y, int n) {
  float sum = 0.0f;
  for (int d = 0; d < n; ++d) sum += x[d] * y[d];
  return sum;
}

// Rows [row0, row0 + kTile) of head h of tokens begin + row (< end) into dst [kTile, dim + 1].
__device__ void LoadTile(const float* src, int64_t stride, int64_t h, int dim, int64_t begin,
                         int64_t row0, int64_t end, float* dst) {
  for (int e = threadIdx.x; e < kTile * dim; e += blockDim.x) {
    const int r = e / dim, d = e % dim;
    const int64_t t = begin + row0 + r;
    dst[r * (dim + 1) + d] = t < end ? src[t * stride + h * dim + d] : 0.0f;
  }
}

// Shared: K tile [kTile, qk+1], V tile [kTile, v+1], q rows [kWarps, qk].
__global__ void ForwardKernel(HstuArgs a, const float* __restrict__ q, const float* __restrict__ k,
                              const float* __restrict__ v, float* __restrict__ out) {
  extern __shared__ float smem[];
  const int qk = static_cast<int>(a.qk_dim), vd = static_cast<int>(a.v_dim);
  const int64_t u = blockIdx.x / a.heads, h = blockIdx.x % a.heads;
  const int64_t begin = a.offsets[u], end = a.offsets[u + 1], len = end - begin;
  const int64_t i0 = int64_t{blockIdx.y} * kWarps;
  if (i0 >= len) return;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* ks = smem;
  float* vs = ks + kTile * (qk + 1);
  float* qi = vs + kTile * (vd + 1) + warp * qk;
  const int64_t i = i0 + warp, gi = begin + i;
  const bool active = i < len;
  for (int d = lane; d < qk; d += kWarpSize) qi[d] = active ? q[gi * a.qk_stride + h * qk + d] : 0;
  const float inv_n = 1.0f / static_cast<float>(a.max_len);
  float acc[kColumns] = {};
  const int64_t key_end = min(len, i0 + kWarps);
  for (int64_t j0 = 0; j0 < key_end; j0 += kTile) {
    __syncthreads();
    LoadTile(k, a.qk_stride, h, qk, begin, j0, end, ks);
    LoadTile(v, a.v_stride, h, vd, begin, j0, end, vs);
    __syncthreads();
    if (!active) continue;
    const int64_t j = j0 + lane;
    float w = 0.0f;
    if (j <= i) {
      int32_t bucket;
      const float s = Dot(qi, ks + lane * (qk + 1), qk) + Rab(a, gi, i, begin + j, j, &bucket);
      w = s * Sigmoid(s) * inv_n;
    }
    for (int r = 0; r < kTile; ++r) {
      const float wr = __shfl_sync(0xffffffffu, w, r);
      if (wr == 0.0f) continue;
#pragma unroll
      for (int c = 0; c < kColumns; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < vd) acc[c] += wr * vs[r * (vd + 1) + d];
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    const int d = lane + c * kWarpSize;
    if (d < vd) out[gi * a.heads * vd + h * vd + d] = acc[c];
  }
}

// dS_ij = (dout_i . v_j) SiLU'(s_ij) / n and a_ij for one (query, key) pair.
struct Pair {
  float a = 0.0f, ds = 0.0f;
  int32_t bucket = 0;
};
__device__ Pair ScorePair(const HstuArgs& a, const float* qi, const float* kj, const float* doi,
                          const float* vj, int64_t gi, int64_t i, int64_t gj, int64_t j,
                          float inv_n) {
  Pair p;
  const float s = Dot(qi, kj, static_cast<int>(a.qk_dim)) + Rab(a, gi, i, gj, j, &p.bucket);
  const float sig = Sigmoid(s);
  p.a = s * sig * inv_n;
  p.ds = Dot(doi, vj, static_cast<int>(a.v_dim)) * sig * (1.0f + s * (1.0f - sig)) * inv_n;
  return p;
}

// dQ and the bias gradients. Shared: K, V tiles; q and dout rows per warp;
// dpos [max_len] and dtime [num_buckets + 1] partial sums.
__global__ void QueryGradKernel(HstuArgs a, const float* __restrict__ q,
                                const float* __restrict__ k, const float* __restrict__ v,
                                const float* __restrict__ dout, float* __restrict__ dq,
                                float* dpos_bias, float* dtime_bias) {
  extern __shared__ float smem[];
  const int qk = static_cast<int>(a.qk_dim), vd = static_cast<int>(a.v_dim);
  const int64_t u = blockIdx.x / a.heads, h = blockIdx.x % a.heads;
  const int64_t begin = a.offsets[u], end = a.offsets[u + 1], len = end - begin;
  const int64_t i0 = int64_t{blockIdx.y} * kWarps;
  if (i0 >= len) return;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* ks = smem;
  float* vs = ks + kTile * (qk + 1);
  float* qi = vs + kTile * (vd + 1) + warp * (qk + vd);
  float* doi = qi + qk;
  float* dpos = vs + kTile * (vd + 1) + kWarps * (qk + vd);  // [max_len]
  float* dtime = dpos + a.max_len;                            // [num_buckets + 1]
  for (int64_t e = threadIdx.x; e < a.max_len + a.num_buckets + 1; e += blockDim.x) dpos[e] = 0;
  const int64_t i = i0 + warp, gi = begin + i;
  const bool active = i < len;
  for (int d = lane; d < qk; d += kWarpSize) qi[d] = active ? q[gi * a.qk_stride + h * qk + d] : 0;
  for (int d = lane; d < vd; d += kWarpSize) {
    doi[d] = active ? dout[gi * a.heads * vd + h * vd + d] : 0;
  }
  const float inv_n = 1.0f / static_cast<float>(a.max_len);
  float acc[kColumns] = {};
  const int64_t key_end = min(len, i0 + kWarps);
  for (int64_t j0 = 0; j0 < key_end; j0 += kTile) {
    __syncthreads();
    LoadTile(k, a.qk_stride, h, qk, begin, j0, end, ks);
    LoadTile(v, a.v_stride, h, vd, begin, j0, end, vs);
    __syncthreads();
    if (!active) continue;
    const int64_t j = j0 + lane;
    float ds = 0.0f;
    if (j <= i) {
      const Pair p = ScorePair(a, qi, ks + lane * (qk + 1), doi, vs + lane * (vd + 1), gi, i,
                               begin + j, j, inv_n);
      ds = p.ds;
      if (dpos_bias != nullptr) atomicAdd(dpos + (a.max_len - 1 + j - i), ds);
      if (dtime_bias != nullptr) atomicAdd(dtime + p.bucket, ds);
    }
    for (int r = 0; r < kTile; ++r) {
      const float dsr = __shfl_sync(0xffffffffu, ds, r);
#pragma unroll
      for (int c = 0; c < kColumns; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < qk) acc[c] += dsr * ks[r * (qk + 1) + d];
      }
    }
  }
  if (active) {
#pragma unroll
    for (int c = 0; c < kColumns; ++c) {
      const int d = lane + c * kWarpSize;
      if (d < qk) dq[gi * a.qk_stride + h * qk + d] = acc[c];
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < a.max_len; e += blockDim.x) {
    if (dpos_bias != nullptr && dpos[e] != 0.0f) atomicAdd(dpos_bias + e, dpos[e]);
  }
  for (int64_t e = threadIdx.x; e <= a.num_buckets; e += blockDim.x) {
    if (dtime_bias != nullptr && dtime[e] != 0.0f) atomicAdd(dtime_bias + e, dtime[e]);
  }
}

// dK, dV: one warp per key. Shared: q and dout tiles; k and v rows per warp.
__global__ void KeyValueGradKernel(HstuArgs a, const float* __restrict__ q,
                                   const float* __restrict__ k, const float* __restrict__ v,
                                   const float* __restrict__ dout, float* __restrict__ dk,
                                   float* __restrict__ dv) {
  extern __shared__ float smem[];
  const int qk = static_cast<int>(a.qk_dim), vd = static_cast<int>(a.v_dim);
  const int64_t u = blockIdx.x / a.heads, h = blockIdx.x % a.heads;
  const int64_t begin = a.offsets[u], end = a.offsets[u + 1], len = end - begin;
  const int64_t j0 = int64_t{blockIdx.y} * kWarps;
  if (j0 >= len) return;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* qs = smem;
  float* dos = qs + kTile * (qk + 1);
  float* kj = dos + kTile * (vd + 1) + warp * (qk + vd);
  float* vj = kj + qk;
  const int64_t j = j0 + warp, gj = begin + j;
  const bool active = j < len;
  for (int d = lane; d < qk; d += kWarpSize) kj[d] = active ? k[gj * a.qk_stride + h * qk + d] : 0;
  for (int d = lane; d < vd; d += kWarpSize) vj[d] = active ? v[gj * a.v_stride + h * vd + d] : 0;
  const float inv_n = 1.0f / static_cast<float>(a.max_len);
  float dk_acc[kColumns] = {}, dv_acc[kColumns] = {};
  for (int64_t r0 = j0 / kTile * kTile; r0 < len; r0 += kTile) {
    __syncthreads();
    LoadTile(q, a.qk_stride, h, qk, begin, r0, end, qs);
    LoadTile(dout, a.heads * vd, h, vd, begin, r0, end, dos);
    __syncthreads();
    if (!active) continue;
    const int64_t i = r0 + lane;
    Pair p;
    if (i < len && j <= i) {
      p = ScorePair(a, qs + lane * (qk + 1), kj, dos + lane * (vd + 1), vj, begin + i, i, gj, j,
                    inv_n);
    }
    for (int r = 0; r < kTile; ++r) {
      const float ar = __shfl_sync(0xffffffffu, p.a, r), dsr = __shfl_sync(0xffffffffu, p.ds, r);
#pragma unroll
      for (int c = 0; c < kColumns; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < vd) dv_acc[c] += ar * dos[r * (vd + 1) + d];
        if (d < qk) dk_acc[c] += dsr * qs[r * (qk + 1) + d];
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    const int d = lane + c * kWarpSize;
    if (d < vd) dv[gj * a.v_stride + h * vd + d] = dv_acc[c];
    if (d < qk) dk[gj * a.qk_stride + h * qk + d] = dk_acc[c];
  }
}

__global__ void QueryTimestampsKernel(const int64_t* offsets, int64_t users,
                                      const int64_t* timestamps, const int64_t* next_timestamps,
                                      int64_t* query_timestamps) {
  TESSERA_CUDA_FOR(u, users) {
    const int64_t begin = offsets[u], end = offsets[u + 1];
    if (end == begin) continue;
    for (int64_t t = begin; t + 1 < end; ++t) query_timestamps[t] = timestamps[t + 1];
    query_timestamps[end - 1] = next_timestamps != nullptr ? next_timestamps[u] : timestamps[end - 1];
  }
}

// The norm-gate, one warp per row; these are one lane's part of a row.
// Its share of the row's sum (`centre` null) or of its squares about *centre.
__device__ __forceinline__ float LaneRowSum(const float* xr, const float* centre, int64_t dim,
                                            int lane) {
  float sum = 0.0f;
  for (int64_t c = lane; c < dim; c += kWarpSize) {
    sum += centre != nullptr ? (xr[c] - *centre) * (xr[c] - *centre) : xr[c];
  }
  return sum;
}

// y = u * (x - mean) * rstd.
__device__ __forceinline__ void LaneGate(const float* xr, const float* ur, float mu, float rs,
                                         float* yr, int64_t dim, int lane) {
  for (int64_t c = lane; c < dim; c += kWarpSize) yr[c] = ur[c] * ((xr[c] - mu) * rs);
}

// Its share of sum g and sum g xhat, g = dy * u.
__device__ __forceinline__ void LaneGradientSums(const float* dyr, const float* xr,
                                                 const float* ur, float mu, float rs,
                                                 int64_t dim, int lane, float* sum_g,
                                                 float* sum_g_xhat) {
  float sg = 0.0f, sgx = 0.0f;
  for (int64_t c = lane; c < dim; c += kWarpSize) {
    const float g = dyr[c] * ur[c];
    sg += g;
    sgx += g * (xr[c] - mu) * rs;
  }
  *sum_g = sg;
  *sum_g_xhat = sgx;
}

// dx, du given the means of g and g xhat over the whole row.
__device__ __forceinline__ void LaneGradient(const float* dyr, const float* xr, const float* ur,
                                             float mu, float rs, float mean_g, float mean_g_xhat,
                                             float* dxr, float* dur, int64_t dim, int lane) {
  for (int64_t c = lane; c < dim; c += kWarpSize) {
    const float xhat = (xr[c] - mu) * rs;
    dur[c] = dyr[c] * xhat;
    dxr[c] = rs * (dyr[c] * ur[c] - mean_g - xhat * mean_g_xhat);
  }
}

#define TESSERA_NORM_GATE_ROW                                                 \
  const int64_t r = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize; \
  const int lane = threadIdx.x % kWarpSize;                                   \
  if (r >= rows) return

__global__ void NormGateForwardKernel(const float* __restrict__ x, const float* __restrict__ u,
                                      int64_t u_stride, float* __restrict__ y,
                                      float* __restrict__ mean, float* __restrict__ rstd,
                                      int64_t rows, int64_t dim, float eps) {
  TESSERA_NORM_GATE_ROW;
  const float* xr = x + r * dim;
  const float mu = WarpSum(LaneRowSum(xr, nullptr, dim, lane)) / static_cast<float>(dim);
  const float rs = rsqrtf(WarpSum(LaneRowSum(xr, &mu, dim, lane)) / static_cast<float>(dim) + eps);
  LaneGate(xr, u + r * u_stride, mu, rs, y + r * dim, dim, lane);
  if (lane == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
}

__global__ void NormGateBackwardKernel(const float* __restrict__ dy, const float* __restrict__ x,
                                       const float* __restrict__ u, int64_t u_stride,
                                       const float* __restrict__ mean,
                                       const float* __restrict__ rstd, float* __restrict__ dx,
                                       float* __restrict__ du, int64_t rows, int64_t dim) {
  TESSERA_NORM_GATE_ROW;
  const float *dyr = dy + r * dim, *xr = x + r * dim, *ur = u + r * u_stride;
  float sum_g, sum_g_xhat;
  LaneGradientSums(dyr, xr, ur, mean[r], rstd[r], dim, lane, &sum_g, &sum_g_xhat);
  LaneGradient(dyr, xr, ur, mean[r], rstd[r], WarpSum(sum_g) / static_cast<float>(dim),
               WarpSum(sum_g_xhat) / static_cast<float>(dim), dx + r * dim, du + r * u_stride,
               dim, lane);
}

// The split-row norm-gate (hstu.h): partial sums, the gate from the summed
// statistics, the backward's partial sums, and dx, du from the summed ones.
__global__ void NormGateSumsKernel(const float* __restrict__ x, int64_t rows, int64_t dim,
                                   const float* __restrict__ mean, float* __restrict__ out) {
  TESSERA_NORM_GATE_ROW;
  const float sum = WarpSum(LaneRowSum(x + r * dim, mean != nullptr ? mean + r : nullptr, dim,
                                       lane));
  if (lane == 0) out[r] = sum;
}

__global__ void NormGateApplyKernel(const float* __restrict__ x, const float* __restrict__ u,
                                    int64_t u_stride, const float* __restrict__ mean,
                                    const float* __restrict__ squares, int64_t count, float eps,
                                    float* __restrict__ y, float* __restrict__ rstd, int64_t rows,
                                    int64_t dim) {
  TESSERA_NORM_GATE_ROW;
  const float rs = rsqrtf(squares[r] / static_cast<float>(count) + eps);
  LaneGate(x + r * dim, u + r * u_stride, mean[r], rs, y + r * dim, dim, lane);
  if (lane == 0) rstd[r] = rs;
}

__global__ void NormGateBackwardSumsKernel(const float* __restrict__ dy,
                                           const float* __restrict__ x,
                                           const float* __restrict__ u, int64_t u_stride,
                                           const float* __restrict__ mean,
                                           const float* __restrict__ rstd, int64_t rows,
                                           int64_t dim, float* __restrict__ sums) {
  TESSERA_NORM_GATE_ROW;
  float sum_g, sum_g_xhat;
  LaneGradientSums(dy + r * dim, x + r * dim, u + r * u_stride, mean[r], rstd[r], dim, lane,
                   &sum_g, &sum_g_xhat);
  sum_g = WarpSum(sum_g);
  sum_g_xhat = WarpSum(sum_g_xhat);
  if (lane == 0) {
    sums[2 * r] = sum_g;
    sums[2 * r + 1] = sum_g_xhat;
  }
}

__global__ void NormGateBackwardApplyKernel(const float* __restrict__ dy,
                                            const float* __restrict__ x,
                                            const float* __restrict__ u, int64_t u_stride,
                                            const float* __restrict__ mean,
                                            const float* __restrict__ rstd,
                                            const float* __restrict__ sums, int64_t count,
                                            float* __restrict__ dx, float* __restrict__ du,
                                            int64_t rows, int64_t dim) {
  TESSERA_NORM_GATE_ROW;
  LaneGradient(dy + r * dim, x + r * dim, u + r * u_stride, mean[r], rstd[r],
               sums[2 * r] / static_cast<float>(count), sums[2 * r + 1] / static_cast<float>(count),
               dx + r * dim, du + r * u_stride, dim, lane);
}

#undef TESSERA_NORM_GATE_ROW

absl::Status CheckArgs(const char* name, const HstuArgs& a) {
  if (a.users < 0 || a.max_len < 0 || a.heads <= 0 || a.qk_dim < 0 || a.v_dim < 0 ||
      a.qk_dim > kMaxHstuDim || a.v_dim > kMaxHstuDim || a.num_buckets < 0 ||
      a.qk_stride < a.heads * a.qk_dim || a.v_stride < a.heads * a.v_dim ||
      (a.max_len + kWarps - 1) / kWarps > 65535) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::%s: unsupported shape users=%d max_len=%d heads=%d qk_dim=%d v_dim=%d (dims at "
        "most %d) num_buckets=%d",
        name, a.users, a.max_len, a.heads, a.qk_dim, a.v_dim, kMaxHstuDim, a.num_buckets));
  }
  return absl::OkStatus();
}

template <typename Kernel, typename... Args>
absl::Status Launch(Kernel kernel, const HstuArgs& a, size_t floats, cudaStream_t stream,
                    Args... args) {
  const size_t bytes = floats * sizeof(float);
  TESSERA_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
  const dim3 grid(static_cast<unsigned>(a.users * a.heads),
                  static_cast<unsigned>((a.max_len + kWarps - 1) / kWarps));
  kernel<<<grid, kWarps * kWarpSize, bytes, stream>>>(a, args...);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

constexpr size_t kMaxSharedBytes = 200 * 1024;  // below Hopper's 227 KiB per block

}  // namespace

absl::Status HstuQueryTimestamps(const int64_t* offsets, int64_t users, const int64_t* timestamps,
                                 const int64_t* next_timestamps, int64_t* query_timestamps,
                                 cudaStream_t stream) {
  return LaunchFlat("HstuQueryTimestamps", users, stream, QueryTimestampsKernel, offsets, users,
                    timestamps, next_timestamps, query_timestamps);
}

absl::Status HstuAttentionForward(const HstuArgs& a, const float* q, const float* k,
                                  const float* v, float* out, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(CheckArgs("HstuAttentionForward", a));
  if (a.users == 0 || a.max_len == 0) return absl::OkStatus();
  const size_t floats = kTile * (a.qk_dim + 1) + kTile * (a.v_dim + 1) + kWarps * a.qk_dim;
  return Launch(ForwardKernel, a, floats, stream, q, k, v, out);
}

absl::Status HstuAttentionBackward(const HstuArgs& a, const float* q, const float* k,
                                   const float* v, const float* dout, float* dq, float* dk,
                                   float* dv, float* dpos_bias, float* dtime_bias,
                                   cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(CheckArgs("HstuAttentionBackward", a));
  if (a.users == 0 || a.max_len == 0) return absl::OkStatus();
  const size_t tiles = kTile * (a.qk_dim + 1) + kTile * (a.v_dim + 1) + kWarps * (a.qk_dim + a.v_dim);
  const size_t query_floats = tiles + a.max_len + a.num_buckets + 1;
  if (query_floats * sizeof(float) > kMaxSharedBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::HstuAttentionBackward: max_len %d + num_buckets %d needs %d bytes of shared "
        "memory per block, more than %d",
        a.max_len, a.num_buckets, query_floats * sizeof(float), kMaxSharedBytes));
  }
  TESSERA_RETURN_IF_ERROR(
      Launch(QueryGradKernel, a, query_floats, stream, q, k, v, dout, dq, dpos_bias, dtime_bias));
  return Launch(KeyValueGradKernel, a, tiles, stream, q, k, v, dout, dk, dv);
}

absl::Status HstuNormGateForward(const float* x, const float* u, int64_t u_stride, float* y,
                                 float* mean, float* rstd, int64_t rows, int64_t dim, float eps,
                                 cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows("HstuNormGateForward", rows, dim));
  if (rows == 0 || dim == 0) return absl::OkStatus();
  NormGateForwardKernel<<<internal::RowBlocks(rows), kRowsPerBlock * kWarpSize, 0, stream>>>(
      x, u, u_stride, y, mean, rstd, rows, dim, eps);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status HstuNormGateBackward(const float* dy, const float* x, const float* u,
                                  int64_t u_stride, const float* mean, const float* rstd,
                                  float* dx, float* du, int64_t rows, int64_t dim,
                                  cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows("HstuNormGateBackward", rows, dim));
  if (rows == 0 || dim == 0) return absl::OkStatus();
  NormGateBackwardKernel<<<internal::RowBlocks(rows), kRowsPerBlock * kWarpSize, 0, stream>>>(
      dy, x, u, u_stride, mean, rstd, dx, du, rows, dim);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

namespace {

// One warp per row of `rows`, after the common argument checks.
template <typename Kernel, typename... Args>
absl::Status LaunchRows(const char* name, int64_t rows, int64_t dim, cudaStream_t stream,
                        Kernel kernel, Args... args) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows(name, rows, dim));
  if (rows == 0) return absl::OkStatus();
  kernel<<<internal::RowBlocks(rows), kRowsPerBlock * kWarpSize, 0, stream>>>(args...);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

}  // namespace

absl::Status HstuNormGateSums(const float* x, int64_t rows, int64_t dim, const float* mean,
                              float* out, cudaStream_t stream) {
  return LaunchRows("HstuNormGateSums", rows, dim, stream, NormGateSumsKernel, x, rows, dim, mean,
                    out);
}

absl::Status HstuNormGateApply(const float* x, const float* u, int64_t u_stride, const float* mean,
                               const float* squares, int64_t count, float eps, float* y,
                               float* rstd, int64_t rows, int64_t dim, cudaStream_t stream) {
  return LaunchRows("HstuNormGateApply", rows, dim, stream, NormGateApplyKernel, x, u, u_stride,
                    mean, squares, count, eps, y, rstd, rows, dim);
}

absl::Status HstuNormGateBackwardSums(const float* dy, const float* x, const float* u,
                                      int64_t u_stride, const float* mean, const float* rstd,
                                      int64_t rows, int64_t dim, float* sums,
                                      cudaStream_t stream) {
  return LaunchRows("HstuNormGateBackwardSums", rows, dim, stream, NormGateBackwardSumsKernel, dy,
                    x, u, u_stride, mean, rstd, rows, dim, sums);
}

absl::Status HstuNormGateBackwardApply(const float* dy, const float* x, const float* u,
                                       int64_t u_stride, const float* mean, const float* rstd,
                                       const float* sums, int64_t count, float* dx, float* du,
                                       int64_t rows, int64_t dim, cudaStream_t stream) {
  return LaunchRows("HstuNormGateBackwardApply", rows, dim, stream, NormGateBackwardApplyKernel,
                    dy, x, u, u_stride, mean, rstd, sums, count, dx, du, rows, dim);
}

}  // namespace tessera::cuda
