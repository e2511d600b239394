// Row softmax: one warp per row; the row max is subtracted before exp so
// large logits do not overflow.
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda/softmax.h"

namespace tessera::cuda {
namespace {

using internal::kRowsPerBlock;
using internal::kWarpSize;
using internal::WarpMax;
using internal::WarpSum;

// x, y: [rows, dim]
__global__ void SoftmaxForwardKernel(const float* __restrict__ x, float* __restrict__ y,
                                     int64_t rows, int64_t dim) {
  const int64_t row = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;
  const float* xr = x + row * dim;
  float* yr = y + row * dim;
  float max_value = -INFINITY;
  for (int64_t j = lane; j < dim; j += kWarpSize) max_value = fmaxf(max_value, xr[j]);
  max_value = WarpMax(max_value);
  float sum = 0.0f;
  for (int64_t j = lane; j < dim; j += kWarpSize) sum += expf(xr[j] - max_value);
  const float inv_sum = 1.0f / WarpSum(sum);
  for (int64_t j = lane; j < dim; j += kWarpSize) yr[j] = expf(xr[j] - max_value) * inv_sum;
}

// dy, y, dx: [rows, dim]
__global__ void SoftmaxBackwardKernel(const float* __restrict__ dy, const float* __restrict__ y,
                                      float* __restrict__ dx, int64_t rows, int64_t dim) {
  const int64_t row = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;
  const float* dyr = dy + row * dim;
  const float* yr = y + row * dim;
  float* dxr = dx + row * dim;
  float dot = 0.0f;
  for (int64_t j = lane; j < dim; j += kWarpSize) dot += dyr[j] * yr[j];
  dot = WarpSum(dot);
  for (int64_t j = lane; j < dim; j += kWarpSize) dxr[j] = yr[j] * (dyr[j] - dot);
}

}  // namespace

absl::Status SoftmaxForward(const float* x, float* y, int64_t rows, int64_t dim,
                            cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows("SoftmaxForward", rows, dim));
  if (rows == 0 || dim == 0) return absl::OkStatus();
  SoftmaxForwardKernel<<<internal::RowBlocks(rows), kRowsPerBlock * kWarpSize, 0, stream>>>(
      x, y, rows, dim);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status SoftmaxBackward(const float* dy, const float* y, float* dx, int64_t rows, int64_t dim,
                             cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows("SoftmaxBackward", rows, dim));
  if (rows == 0 || dim == 0) return absl::OkStatus();
  SoftmaxBackwardKernel<<<internal::RowBlocks(rows), kRowsPerBlock * kWarpSize, 0, stream>>>(
      dy, y, dx, rows, dim);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

}  // namespace tessera::cuda
