// Elementwise activation kernels: grid-stride loops, math in fp32 with the
// accurate expf/tanhf (no fast-math), so results track the CPU to rounding.
#include "runtime/kernels/cuda/activation.h"
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/common.cuh"

namespace tessera::cuda {
namespace {

using internal::ElementwiseBlocks;
using internal::kElementwiseThreads;
using internal::kWarpSize;

#define TESSERA_GRID_STRIDE(i, n)                                           \
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < (n); \
       i += int64_t{gridDim.x} * blockDim.x)

__device__ __forceinline__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// d/dx silu(x) = s (1 + x (1 - s)), s = sigmoid(x)
__device__ __forceinline__ float SiluGrad(float x) {
  const float s = Sigmoid(x);
  return s * (1.0f + x * (1.0f - s));
}

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

__global__ void SiluForwardKernel(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) { y[i] = x[i] * Sigmoid(x[i]); }
}

__global__ void SiluBackwardKernel(const float* __restrict__ dy, const float* __restrict__ x,
                                   float* __restrict__ dx, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) { dx[i] = dy[i] * SiluGrad(x[i]); }
}

__global__ void GeluForwardKernel(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) {
    const float v = x[i];
    const float t = tanhf(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
    y[i] = 0.5f * v * (1.0f + t);
  }
}

// d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
__global__ void GeluBackwardKernel(const float* __restrict__ dy, const float* __restrict__ x,
                                   float* __restrict__ dx, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) {
    const float v = x[i];
    const float t = tanhf(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * v * v);
    dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
  }
}

// x: [rows, 2*hidden], y: [rows, hidden]
__global__ void SwigluForwardKernel(const float* __restrict__ x, float* __restrict__ y,
                                    int64_t rows, int64_t hidden) {
  TESSERA_GRID_STRIDE(i, rows * hidden) {
    const int64_t r = i / hidden;
    const int64_t j = i % hidden;
    const float gate = x[r * 2 * hidden + j];
    const float up = x[r * 2 * hidden + hidden + j];
    y[i] = gate * Sigmoid(gate) * up;
  }
}

// dy: [rows, hidden]; x, dx: [rows, 2*hidden]
__global__ void SwigluBackwardKernel(const float* __restrict__ dy, const float* __restrict__ x,
                                     float* __restrict__ dx, int64_t rows, int64_t hidden) {
  TESSERA_GRID_STRIDE(i, rows * hidden) {
    const int64_t r = i / hidden;
    const int64_t j = i % hidden;
    const float gate = x[r * 2 * hidden + j];
    const float up = x[r * 2 * hidden + hidden + j];
    dx[r * 2 * hidden + j] = dy[i] * up * SiluGrad(gate);
    dx[r * 2 * hidden + hidden + j] = dy[i] * gate * Sigmoid(gate);
  }
}

__global__ void ReluSquaredForwardKernel(const float* __restrict__ x, float* __restrict__ y,
                                         int64_t n) {
  TESSERA_GRID_STRIDE(i, n) {
    const float r = fmaxf(x[i], 0.0f);
    y[i] = r * r;
  }
}

__global__ void ReluSquaredBackwardKernel(const float* __restrict__ dy,
                                          const float* __restrict__ x, float* __restrict__ dx,
                                          int64_t n) {
  TESSERA_GRID_STRIDE(i, n) { dx[i] = x[i] > 0.0f ? 2.0f * x[i] * dy[i] : 0.0f; }
}

__global__ void AddInPlaceKernel(float* __restrict__ y, const float* __restrict__ x, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) { y[i] += x[i]; }
}

// y: [rows, dim], bias: [dim]
__global__ void AddBiasRowsKernel(float* __restrict__ y, const float* __restrict__ bias,
                                  int64_t rows, int64_t dim) {
  TESSERA_GRID_STRIDE(i, rows * dim) { y[i] += bias[i % dim]; }
}

// y: [rows, dim], scale: [rows]
__global__ void AddScaledRowsKernel(float* __restrict__ y, const float* __restrict__ scale,
                                    const float* __restrict__ x, int64_t rows, int64_t dim) {
  TESSERA_GRID_STRIDE(i, rows * dim) { y[i] += scale[i / dim] * x[i]; }
}

// dbias[j] += sum_r dy[r, j]. Block (32, kRowGroups): threadIdx.x picks the
// column, threadIdx.y a strided subset of rows; partials are then added in
// index order, so the sum is the same on every run.
constexpr int kRowGroups = 16;
__global__ void SumRowsAccumulateKernel(const float* __restrict__ dy, float* __restrict__ dbias,
                                        int64_t rows, int64_t dim) {
  __shared__ float partial[kRowGroups][kWarpSize + 1];
  const int64_t col = int64_t{blockIdx.x} * kWarpSize + threadIdx.x;
  float sum = 0.0f;
  if (col < dim) {
    for (int64_t r = threadIdx.y; r < rows; r += kRowGroups) sum += dy[r * dim + col];
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || col >= dim) return;
  float total = 0.0f;
  for (int i = 0; i < kRowGroups; ++i) total += partial[i][threadIdx.x];
  dbias[col] += total;
}

#undef TESSERA_GRID_STRIDE

// Launches an elementwise kernel over `n` items and checks the launch.
template <typename Kernel, typename... Args>
absl::Status LaunchElementwise(const char* name, int64_t n, cudaStream_t stream, Kernel kernel,
                               Args... args) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative(name, n));
  if (n == 0) return absl::OkStatus();
  kernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(args...);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

}  // namespace

absl::Status SiluForward(const float* x, float* y, int64_t n, cudaStream_t stream) {
  return LaunchElementwise("SiluForward", n, stream, SiluForwardKernel, x, y, n);
}

absl::Status SiluBackward(const float* dy, const float* x, float* dx, int64_t n,
                          cudaStream_t stream) {
  return LaunchElementwise("SiluBackward", n, stream, SiluBackwardKernel, dy, x, dx, n);
}

absl::Status GeluForward(const float* x, float* y, int64_t n, cudaStream_t stream) {
  return LaunchElementwise("GeluForward", n, stream, GeluForwardKernel, x, y, n);
}

absl::Status GeluBackward(const float* dy, const float* x, float* dx, int64_t n,
                          cudaStream_t stream) {
  return LaunchElementwise("GeluBackward", n, stream, GeluBackwardKernel, dy, x, dx, n);
}

absl::Status SwigluForward(const float* x, float* y, int64_t rows, int64_t hidden,
                           cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("SwigluForward", rows, hidden));
  return LaunchElementwise("SwigluForward", rows * hidden, stream, SwigluForwardKernel, x, y, rows,
                           hidden);
}

absl::Status SwigluBackward(const float* dy, const float* x, float* dx, int64_t rows,
                            int64_t hidden, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("SwigluBackward", rows, hidden));
  return LaunchElementwise("SwigluBackward", rows * hidden, stream, SwigluBackwardKernel, dy, x, dx,
                           rows, hidden);
}

absl::Status ReluSquaredForward(const float* x, float* y, int64_t n, cudaStream_t stream) {
  return LaunchElementwise("ReluSquaredForward", n, stream, ReluSquaredForwardKernel, x, y, n);
}

absl::Status ReluSquaredBackward(const float* dy, const float* x, float* dx, int64_t n,
                                 cudaStream_t stream) {
  return LaunchElementwise("ReluSquaredBackward", n, stream, ReluSquaredBackwardKernel, dy, x, dx,
                           n);
}

absl::Status AddInPlace(float* y, const float* x, int64_t n, cudaStream_t stream) {
  return LaunchElementwise("AddInPlace", n, stream, AddInPlaceKernel, y, x, n);
}

absl::Status AddBiasRows(float* y, const float* bias, int64_t rows, int64_t dim,
                         cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("AddBiasRows", rows, dim));
  return LaunchElementwise("AddBiasRows", rows * dim, stream, AddBiasRowsKernel, y, bias, rows,
                           dim);
}

absl::Status SumRowsAccumulate(const float* dy, float* dbias, int64_t rows, int64_t dim,
                               cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("SumRowsAccumulate", rows, dim));
  if (rows == 0 || dim == 0) return absl::OkStatus();
  const int blocks = static_cast<int>((dim + kWarpSize - 1) / kWarpSize);
  SumRowsAccumulateKernel<<<blocks, dim3(kWarpSize, kRowGroups), 0, stream>>>(dy, dbias, rows, dim);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status AddScaledRows(float* y, const float* scale, const float* x, int64_t rows,
                           int64_t dim, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("AddScaledRows", rows, dim));
  return LaunchElementwise("AddScaledRows", rows * dim, stream, AddScaledRowsKernel, y, scale, x,
                           rows, dim);
}

}  // namespace tessera::cuda
