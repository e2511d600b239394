// The Mamba-2 mixer's pointwise pieces: dt = softplus(dt_raw + bias) read in
// place from the in_proj output, and the gated RMSNorm by group. Straight
// kernels: one thread per element, one warp per (row, group), and parameter
// gradients summed over rows in a fixed order (deterministic).
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda/ssm_pointwise.h"

namespace tessera::cuda {
namespace {

using internal::kWarpSize;
using internal::WarpSum;

constexpr float kSoftplusThreshold = 20.0f;
constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void DtSoftplusForwardKernel(const float* __restrict__ raw, int64_t stride,
                                        const float* __restrict__ bias, float* __restrict__ dt,
                                        int64_t rows, int64_t heads) {
  TESSERA_CUDA_FOR(i, rows * heads) {
    const int64_t r = i / heads, h = i % heads;
    const float v = raw[r * stride + h] + bias[h];
    dt[i] = v > kSoftplusThreshold ? v : log1pf(expf(v));
  }
}

__global__ void DtSoftplusBackwardKernel(const float* __restrict__ ddt,
                                         const float* __restrict__ raw, int64_t stride,
                                         const float* __restrict__ bias, float* __restrict__ draw,
                                         int64_t rows, int64_t heads) {
  TESSERA_CUDA_FOR(i, rows * heads) {
    const int64_t r = i / heads, h = i % heads;
    const float v = raw[r * stride + h] + bias[h];
    draw[r * stride + h] = ddt[i] * (v > kSoftplusThreshold ? 1.0f : Sigmoid(v));
  }
}

// dbias[h] += sum_r draw[r, h]: one block per head, a fixed reduction order.
__global__ void StridedColumnSumKernel(const float* __restrict__ values, int64_t stride,
                                       int64_t rows, float* __restrict__ out) {
  __shared__ float scratch[kWarpSize];
  const int64_t h = blockIdx.x;
  float sum = 0.0f;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) sum += values[r * stride + h];
  sum = internal::BlockSum(sum, scratch);
  if (threadIdx.x == 0) out[h] += sum;
}

__global__ void SsmDecayRatesForwardKernel(const float* __restrict__ a_log,
                                           float* __restrict__ a, int64_t heads) {
  TESSERA_CUDA_FOR(h, heads) { a[h] = -expf(a_log[h]); }
}

__global__ void SsmDecayRatesBackwardKernel(const float* __restrict__ da,
                                            const float* __restrict__ a,
                                            float* __restrict__ da_log, int64_t heads) {
  TESSERA_CUDA_FOR(h, heads) { da_log[h] += da[h] * a[h]; }
}

// One thread per (b, h), walking the positions in order: the CPU's sum.
__global__ void SsdShardDecayKernel(const float* __restrict__ dt, const float* __restrict__ A,
                                    float* __restrict__ decay, int64_t batch, int64_t seq,
                                    int64_t heads) {
  TESSERA_CUDA_FOR(i, batch * heads) {
    const int64_t b = i / heads, h = i % heads;
    double sum = 0;
    for (int64_t t = 0; t < seq; ++t) sum += dt[(b * seq + t) * heads + h];
    decay[i] = static_cast<float>(exp(sum * static_cast<double>(A[h])));
  }
}

// One warp per (row, group).
__global__ void GatedRmsNormForwardKernel(const float* __restrict__ x, const float* __restrict__ z,
                                          int64_t z_stride, const float* __restrict__ weight,
                                          float* __restrict__ y, float* __restrict__ rstd,
                                          int64_t rows, int64_t dim, int64_t group, float eps) {
  const int64_t groups = dim / group;
  const int64_t item = int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (item >= rows * groups) return;
  const int64_t r = item / groups, c0 = (item % groups) * group;
  float sum = 0.0f;
  for (int64_t j = lane; j < group; j += kWarpSize) {
    const float zj = z[r * z_stride + c0 + j];
    const float u = x[r * dim + c0 + j] * zj * Sigmoid(zj);
    sum += u * u;
  }
  const float s = rsqrtf(WarpSum(sum) / static_cast<float>(group) + eps);
  if (lane == 0) rstd[item] = s;
  for (int64_t j = lane; j < group; j += kWarpSize) {
    const float zj = z[r * z_stride + c0 + j];
    y[r * dim + c0 + j] = x[r * dim + c0 + j] * zj * Sigmoid(zj) * s * weight[c0 + j];
  }
}

__global__ void GatedRmsNormBackwardKernel(const float* __restrict__ dy,
                                           const float* __restrict__ x,
                                           const float* __restrict__ z, int64_t z_stride,
                                           const float* __restrict__ weight,
                                           const float* __restrict__ rstd, float* __restrict__ dx,
                                           float* __restrict__ dz, int64_t rows, int64_t dim,
                                           int64_t group) {
  const int64_t groups = dim / group;
  const int64_t item = int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (item >= rows * groups) return;
  const int64_t r = item / groups, c0 = (item % groups) * group;
  const float s = rstd[item];
  float sum = 0.0f;
  for (int64_t j = lane; j < group; j += kWarpSize) {
    const float zj = z[r * z_stride + c0 + j];
    sum += dy[r * dim + c0 + j] * weight[c0 + j] * x[r * dim + c0 + j] * zj * Sigmoid(zj) * s;
  }
  const float mean = WarpSum(sum) / static_cast<float>(group);
  for (int64_t j = lane; j < group; j += kWarpSize) {
    const float zj = z[r * z_stride + c0 + j], xj = x[r * dim + c0 + j];
    const float sig = Sigmoid(zj), silu = zj * sig;
    const float du = s * (dy[r * dim + c0 + j] * weight[c0 + j] - xj * silu * s * mean);
    dx[r * dim + c0 + j] = du * silu;
    dz[r * z_stride + c0 + j] = du * xj * sig * (1.0f + zj * (1.0f - sig));
  }
}

// dweight[j] += sum_r dy[r, j] * uhat[r, j]: one thread per column, rows in order.
__global__ void GatedRmsNormWeightKernel(const float* __restrict__ dy, const float* __restrict__ x,
                                         const float* __restrict__ z, int64_t z_stride,
                                         const float* __restrict__ rstd,
                                         float* __restrict__ dweight, int64_t rows, int64_t dim,
                                         int64_t group) {
  TESSERA_CUDA_FOR(j, dim) {
    const int64_t groups = dim / group;
    float sum = 0.0f;
    for (int64_t r = 0; r < rows; ++r) {
      const float zj = z[r * z_stride + j];
      sum += dy[r * dim + j] * x[r * dim + j] * zj * Sigmoid(zj) * rstd[r * groups + j / group];
    }
    dweight[j] += sum;
  }
}

int WarpBlocks(int64_t items) {
  return static_cast<int>((items + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

absl::Status DtSoftplusForward(const float* dt_raw, int64_t raw_stride, const float* bias,
                               float* dt, int64_t rows, int64_t heads, cudaStream_t stream) {
  return internal::LaunchFlat("DtSoftplusForward", rows * heads, stream, DtSoftplusForwardKernel,
                              dt_raw, raw_stride, bias, dt, rows, heads);
}

absl::Status DtSoftplusBackward(const float* ddt, const float* dt_raw, int64_t raw_stride,
                                const float* bias, float* ddt_raw, float* dbias, int64_t rows,
                                int64_t heads, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::LaunchFlat("DtSoftplusBackward", rows * heads, stream,
                                               DtSoftplusBackwardKernel, ddt, dt_raw, raw_stride,
                                               bias, ddt_raw, rows, heads));
  if (rows == 0 || heads == 0) return absl::OkStatus();
  StridedColumnSumKernel<<<static_cast<unsigned>(heads), kThreads, 0, stream>>>(
      ddt_raw, raw_stride, rows, dbias);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status GatedRmsNormForward(const float* x, const float* z, int64_t z_stride,
                                 const float* weight, float* y, float* rstd, int64_t rows,
                                 int64_t dim, int64_t group_size, float eps, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows("GatedRmsNormForward", rows, dim));
  const int64_t items = rows * (dim / group_size);
  if (items == 0) return absl::OkStatus();
  GatedRmsNormForwardKernel<<<WarpBlocks(items), kWarpsPerBlock * kWarpSize, 0, stream>>>(
      x, z, z_stride, weight, y, rstd, rows, dim, group_size, eps);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status GatedRmsNormBackward(const float* dy, const float* x, const float* z,
                                  int64_t z_stride, const float* weight, const float* rstd,
                                  float* dx, float* dz, float* dweight, int64_t rows, int64_t dim,
                                  int64_t group_size, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows("GatedRmsNormBackward", rows, dim));
  const int64_t items = rows * (dim / group_size);
  if (items == 0) return absl::OkStatus();
  GatedRmsNormBackwardKernel<<<WarpBlocks(items), kWarpsPerBlock * kWarpSize, 0, stream>>>(
      dy, x, z, z_stride, weight, rstd, dx, dz, rows, dim, group_size);
  TESSERA_CUDA_LAUNCH();
  return internal::LaunchFlat("GatedRmsNormBackward(dweight)", dim, stream,
                              GatedRmsNormWeightKernel, dy, x, z, z_stride, rstd, dweight, rows,
                              dim, group_size);
}

absl::Status SsmDecayRatesForward(const float* a_log, float* a, int64_t heads,
                                  cudaStream_t stream) {
  return internal::LaunchFlat("SsmDecayRatesForward", heads, stream, SsmDecayRatesForwardKernel,
                              a_log, a, heads);
}

absl::Status SsmDecayRatesBackward(const float* da, const float* a, float* da_log, int64_t heads,
                                   cudaStream_t stream) {
  return internal::LaunchFlat("SsmDecayRatesBackward", heads, stream, SsmDecayRatesBackwardKernel,
                              da, a, da_log, heads);
}

absl::Status SsdShardDecay(const float* dt, const float* A, float* decay, int64_t batch,
                           int64_t seq, int64_t heads, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("SsdShardDecay", batch, heads));
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("SsdShardDecay", seq));
  return internal::LaunchFlat("SsdShardDecay", batch * heads, stream, SsdShardDecayKernel, dt, A,
                              decay, batch, seq, heads);
}

}  // namespace tessera::cuda
