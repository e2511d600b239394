// LayerNorm / RMSNorm kernels. RMSNorm is LayerNorm without the mean: the
// kernels take a null `mean` to mean "RMS".
//
// Forward and dx: one warp per row, statistics in fp32 with warp shuffles
// (two passes over the row for the variance, which stays accurate when
// |mean| >> std). dgamma/dbeta: a separate column-reduction kernel, each
// block owning 32 columns and summing over rows in a fixed order, so the
// result does not depend on scheduling.
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda/layer_norm.h"

namespace tessera::cuda {
namespace {

using internal::kRowsPerBlock;
using internal::kWarpSize;
using internal::WarpSum;

// x, y: [rows, dim]; mean (null for RMSNorm), rstd: [rows].
__global__ void NormForwardKernel(const float* __restrict__ x, const float* __restrict__ gamma,
                                  const float* __restrict__ beta, float* __restrict__ y,
                                  float* __restrict__ mean, float* __restrict__ rstd, int64_t rows,
                                  int64_t dim, float eps) {
  const int64_t row = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;
  const float* xr = x + row * dim;
  float* yr = y + row * dim;

  float mu = 0.0f;
  if (mean != nullptr) {
    float sum = 0.0f;
    for (int64_t j = lane; j < dim; j += kWarpSize) sum += xr[j];
    mu = dim > 0 ? WarpSum(sum) / static_cast<float>(dim) : 0.0f;
  }
  float sq = 0.0f;
  for (int64_t j = lane; j < dim; j += kWarpSize) {
    const float d = xr[j] - mu;
    sq += d * d;
  }
  const float var = dim > 0 ? WarpSum(sq) / static_cast<float>(dim) : 0.0f;
  const float rs = rsqrtf(var + eps);

  for (int64_t j = lane; j < dim; j += kWarpSize) {
    float v = (xr[j] - mu) * rs;
    if (gamma != nullptr) v *= gamma[j];
    if (beta != nullptr) v += beta[j];
    yr[j] = v;
  }
  if (lane == 0) {
    if (mean != nullptr) mean[row] = mu;
    rstd[row] = rs;
  }
}

// With xhat = (x - mean) * rstd and g = dy * gamma:
//   LayerNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMSNorm:   dx = rstd * (g - xhat * mean(g * xhat))
__global__ void NormBackwardDxKernel(const float* __restrict__ dy, const float* __restrict__ x,
                                     const float* __restrict__ gamma,
                                     const float* __restrict__ mean, const float* __restrict__ rstd,
                                     float* __restrict__ dx, int64_t rows, int64_t dim) {
  const int64_t row = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;
  const float* dyr = dy + row * dim;
  const float* xr = x + row * dim;
  float* dxr = dx + row * dim;
  const float mu = mean != nullptr ? mean[row] : 0.0f;
  const float rs = rstd[row];

  float sum_g = 0.0f;
  float sum_g_xhat = 0.0f;
  for (int64_t j = lane; j < dim; j += kWarpSize) {
    const float g = gamma != nullptr ? dyr[j] * gamma[j] : dyr[j];
    sum_g += g;
    sum_g_xhat += g * (xr[j] - mu) * rs;
  }
  const float inv_dim = 1.0f / static_cast<float>(dim);
  const float mean_g = mean != nullptr ? WarpSum(sum_g) * inv_dim : 0.0f;
  const float mean_g_xhat = WarpSum(sum_g_xhat) * inv_dim;

  for (int64_t j = lane; j < dim; j += kWarpSize) {
    const float g = gamma != nullptr ? dyr[j] * gamma[j] : dyr[j];
    const float xhat = (xr[j] - mu) * rs;
    dxr[j] = rs * (g - mean_g - xhat * mean_g_xhat);
  }
}

// dgamma[j] += sum_r dy[r, j] * xhat[r, j]; dbeta[j] += sum_r dy[r, j].
// Block (32, kRowGroups): threadIdx.x picks the column (coalesced loads),
// threadIdx.y a strided subset of rows; the kRowGroups partials are then
// added in index order.
constexpr int kRowGroups = 16;
__global__ void NormBackwardParamsKernel(const float* __restrict__ dy, const float* __restrict__ x,
                                         const float* __restrict__ mean,
                                         const float* __restrict__ rstd, float* __restrict__ dgamma,
                                         float* __restrict__ dbeta, int64_t rows, int64_t dim) {
  __shared__ float partial_gamma[kRowGroups][kWarpSize + 1];
  __shared__ float partial_beta[kRowGroups][kWarpSize + 1];
  const int64_t col = int64_t{blockIdx.x} * kWarpSize + threadIdx.x;
  float sum_gamma = 0.0f;
  float sum_beta = 0.0f;
  if (col < dim) {
    for (int64_t r = threadIdx.y; r < rows; r += kRowGroups) {
      const float d = dy[r * dim + col];
      const float mu = mean != nullptr ? mean[r] : 0.0f;
      sum_gamma += d * (x[r * dim + col] - mu) * rstd[r];
      sum_beta += d;
    }
  }
  partial_gamma[threadIdx.y][threadIdx.x] = sum_gamma;
  partial_beta[threadIdx.y][threadIdx.x] = sum_beta;
  __syncthreads();
  if (threadIdx.y != 0 || col >= dim) return;
  float total_gamma = 0.0f;
  float total_beta = 0.0f;
  for (int i = 0; i < kRowGroups; ++i) {
    total_gamma += partial_gamma[i][threadIdx.x];
    total_beta += partial_beta[i][threadIdx.x];
  }
  if (dgamma != nullptr) dgamma[col] += total_gamma;
  if (dbeta != nullptr) dbeta[col] += total_beta;
}

absl::Status NormForward(const char* name, const float* x, const float* gamma, const float* beta,
                         float* y, float* mean, float* rstd, int64_t rows, int64_t dim, float eps,
                         cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows(name, rows, dim));
  if (rows == 0) return absl::OkStatus();
  NormForwardKernel<<<internal::RowBlocks(rows), kRowsPerBlock * kWarpSize, 0, stream>>>(
      x, gamma, beta, y, mean, rstd, rows, dim, eps);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status NormBackward(const char* name, const float* dy, const float* x, const float* gamma,
                          const float* mean, const float* rstd, float* dx, float* dgamma,
                          float* dbeta, int64_t rows, int64_t dim, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows(name, rows, dim));
  if (rows == 0 || dim == 0) return absl::OkStatus();
  NormBackwardDxKernel<<<internal::RowBlocks(rows), kRowsPerBlock * kWarpSize, 0, stream>>>(
      dy, x, gamma, mean, rstd, dx, rows, dim);
  TESSERA_CUDA_LAUNCH();
  if (dgamma != nullptr || dbeta != nullptr) {
    const int blocks = static_cast<int>((dim + kWarpSize - 1) / kWarpSize);
    NormBackwardParamsKernel<<<blocks, dim3(kWarpSize, kRowGroups), 0, stream>>>(
        dy, x, mean, rstd, dgamma, dbeta, rows, dim);
    TESSERA_CUDA_LAUNCH();
  }
  return absl::OkStatus();
}

// adaLN: one warp per row of [B, S, D]; the row's sample b = row / seq
// picks its shift and scale rows (cond_stride apart).
struct ModulateRows {
  int64_t seq, dim, cond_stride;
};

__global__ void NormModulateForwardKernel(const float* __restrict__ x,
                                          const float* __restrict__ shift,
                                          const float* __restrict__ scale, float* __restrict__ y,
                                          float* __restrict__ mean, float* __restrict__ rstd,
                                          int64_t rows, ModulateRows g, float eps) {
  const int64_t row = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;
  const int64_t dim = g.dim;
  const float* xr = x + row * dim;
  const float* sh = shift + (row / g.seq) * g.cond_stride;
  const float* sc = scale + (row / g.seq) * g.cond_stride;
  float* yr = y + row * dim;
  float sum = 0.0f;
  for (int64_t j = lane; j < dim; j += kWarpSize) sum += xr[j];
  const float mu = dim > 0 ? WarpSum(sum) / static_cast<float>(dim) : 0.0f;
  float sq = 0.0f;
  for (int64_t j = lane; j < dim; j += kWarpSize) {
    const float d = xr[j] - mu;
    sq += d * d;
  }
  const float var = dim > 0 ? WarpSum(sq) / static_cast<float>(dim) : 0.0f;
  const float rs = rsqrtf(var + eps);
  for (int64_t j = lane; j < dim; j += kWarpSize) {
    yr[j] = (xr[j] - mu) * rs * (1.0f + sc[j]) + sh[j];
  }
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * (1 + scale[b]).
__global__ void NormModulateDxKernel(const float* __restrict__ dy, const float* __restrict__ x,
                                     const float* __restrict__ mean,
                                     const float* __restrict__ rstd,
                                     const float* __restrict__ scale, float* __restrict__ dx,
                                     int64_t rows, ModulateRows g) {
  const int64_t row = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;
  const int64_t dim = g.dim;
  const float* dyr = dy + row * dim;
  const float* xr = x + row * dim;
  const float* sc = scale + (row / g.seq) * g.cond_stride;
  float* dxr = dx + row * dim;
  const float mu = mean[row];
  const float rs = rstd[row];
  float sum_g = 0.0f;
  float sum_g_xhat = 0.0f;
  for (int64_t j = lane; j < dim; j += kWarpSize) {
    const float gj = dyr[j] * (1.0f + sc[j]);
    sum_g += gj;
    sum_g_xhat += gj * (xr[j] - mu) * rs;
  }
  const float inv_dim = 1.0f / static_cast<float>(dim);
  const float mean_g = WarpSum(sum_g) * inv_dim;
  const float mean_g_xhat = WarpSum(sum_g_xhat) * inv_dim;
  for (int64_t j = lane; j < dim; j += kWarpSize) {
    const float gj = dyr[j] * (1.0f + sc[j]);
    dxr[j] = rs * (gj - mean_g - (xr[j] - mu) * rs * mean_g_xhat);
  }
}

// dshift[b, d] += sum_s dy; dscale[b, d] += sum_s dy * xhat: one thread per
// (b, d), in sequence order (deterministic, coalesced over d).
__global__ void NormModulateParamsKernel(const float* __restrict__ dy,
                                         const float* __restrict__ x,
                                         const float* __restrict__ mean,
                                         const float* __restrict__ rstd,
                                         float* __restrict__ dshift, float* __restrict__ dscale,
                                         int64_t batch, ModulateRows g) {
  TESSERA_CUDA_FOR(i, batch * g.dim) {
    const int64_t b = i / g.dim, d = i % g.dim;
    float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
    for (int64_t s = 0; s < g.seq; ++s) {
      const int64_t row = b * g.seq + s;
      const float v = dy[row * g.dim + d];
      sum_dy += v;
      sum_dy_xhat += v * (x[row * g.dim + d] - mean[row]) * rstd[row];
    }
    dshift[b * g.cond_stride + d] += sum_dy;
    dscale[b * g.cond_stride + d] += sum_dy_xhat;
  }
}

}  // namespace

absl::Status LayerNormModulateForward(const float* x, const float* shift, const float* scale,
                                      float* y, float* mean, float* rstd, int64_t batch,
                                      int64_t seq, int64_t dim, int64_t cond_stride, float eps,
                                      cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("LayerNormModulateForward", batch, seq));
  const int64_t rows = batch * seq;
  TESSERA_RETURN_IF_ERROR(internal::CheckRows("LayerNormModulateForward", rows, dim));
  if (rows == 0) return absl::OkStatus();
  NormModulateForwardKernel<<<internal::RowBlocks(rows), kRowsPerBlock * kWarpSize, 0, stream>>>(
      x, shift, scale, y, mean, rstd, rows, ModulateRows{seq, dim, cond_stride}, eps);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status LayerNormModulateBackward(const float* dy, const float* x, const float* mean,
                                       const float* rstd, const float* scale, float* dx,
                                       float* dshift, float* dscale, int64_t batch, int64_t seq,
                                       int64_t dim, int64_t cond_stride, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("LayerNormModulateBackward", batch, seq));
  const int64_t rows = batch * seq;
  TESSERA_RETURN_IF_ERROR(internal::CheckRows("LayerNormModulateBackward", rows, dim));
  if (rows == 0 || dim == 0) return absl::OkStatus();
  const ModulateRows g{seq, dim, cond_stride};
  NormModulateDxKernel<<<internal::RowBlocks(rows), kRowsPerBlock * kWarpSize, 0, stream>>>(
      dy, x, mean, rstd, scale, dx, rows, g);
  TESSERA_CUDA_LAUNCH();
  return internal::LaunchFlat("LayerNormModulateBackward(params)", batch * dim, stream,
                              NormModulateParamsKernel, dy, x, mean, rstd, dshift, dscale, batch,
                              g);
}

absl::Status LayerNormForward(const float* x, const float* gamma, const float* beta, float* y,
                              float* mean, float* rstd, int64_t rows, int64_t dim, float eps,
                              cudaStream_t stream) {
  if (mean == nullptr) return absl::InvalidArgumentError("cuda::LayerNormForward: mean is null");
  return NormForward("LayerNormForward", x, gamma, beta, y, mean, rstd, rows, dim, eps, stream);
}

absl::Status LayerNormBackward(const float* dy, const float* x, const float* gamma,
                               const float* mean, const float* rstd, float* dx, float* dgamma,
                               float* dbeta, int64_t rows, int64_t dim, cudaStream_t stream) {
  if (mean == nullptr) return absl::InvalidArgumentError("cuda::LayerNormBackward: mean is null");
  return NormBackward("LayerNormBackward", dy, x, gamma, mean, rstd, dx, dgamma, dbeta, rows, dim,
                      stream);
}

absl::Status RmsNormForward(const float* x, const float* gamma, float* y, float* rstd, int64_t rows,
                            int64_t dim, float eps, cudaStream_t stream) {
  return NormForward("RmsNormForward", x, gamma, /*beta=*/nullptr, y, /*mean=*/nullptr, rstd, rows,
                     dim, eps, stream);
}

absl::Status RmsNormBackward(const float* dy, const float* x, const float* gamma, const float* rstd,
                             float* dx, float* dgamma, int64_t rows, int64_t dim,
                             cudaStream_t stream) {
  return NormBackward("RmsNormBackward", dy, x, gamma, /*mean=*/nullptr, rstd, dx, dgamma,
                      /*dbeta=*/nullptr, rows, dim, stream);
}

}  // namespace tessera::cuda
