// Launch helpers and warp reductions shared by the kernels in this folder.
// Only .cu files include this header.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "runtime/base/status.h"

namespace tessera::cuda::internal {

inline constexpr int kWarpSize = 32;

// Elementwise kernels: 256 threads a block, grid-stride loops, and at most
// enough blocks to fill the device several times over.
inline constexpr int kElementwiseThreads = 256;
inline int ElementwiseBlocks(int64_t n) {
  constexpr int64_t kMaxBlocks = 65536;
  return static_cast<int>(
      std::clamp<int64_t>((n + kElementwiseThreads - 1) / kElementwiseThreads, 1, kMaxBlocks));
}

// Row kernels: one warp per row, kRowsPerBlock rows (warps) a block.
inline constexpr int kRowsPerBlock = 4;
inline int RowBlocks(int64_t rows) {
  return static_cast<int>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

inline absl::Status CheckNonNegative(absl::string_view kernel, int64_t a, int64_t b = 0) {
  if (a < 0 || b < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cuda::%s: negative size (%d, %d)", kernel, a, b));
  }
  return absl::OkStatus();
}

// Row kernels put rows on grid dimension x, which holds at most 2^31 - 1 blocks.
inline absl::Status CheckRows(absl::string_view kernel, int64_t rows, int64_t dim) {
  if (absl::Status status = CheckNonNegative(kernel, rows, dim); !status.ok()) return status;
  if (rows / kRowsPerBlock >= INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cuda::%s: %d rows is too many for one launch", kernel, rows));
  }
  return absl::OkStatus();
}

// Sum / max over the 32 lanes of a warp; every lane gets the result. The
// butterfly order is fixed, so results are deterministic.
__device__ __forceinline__ float WarpSum(float value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}
__device__ __forceinline__ float WarpMax(float value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// A grid-stride loop over [0, n) (int64 indices).
#define TESSERA_CUDA_FOR(i, n)                                              \
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < (n); \
       i += int64_t{gridDim.x} * blockDim.x)

// Launches `kernel` over `n` elementwise items on `stream` and checks the
// launch; n == 0 launches nothing.
template <typename Kernel, typename... Args>
absl::Status LaunchFlat(const char* name, int64_t n, cudaStream_t stream, Kernel kernel,
                        Args... args) {
  if (absl::Status status = CheckNonNegative(name, n); !status.ok()) return status;
  if (n == 0) return absl::OkStatus();
  kernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(args...);
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) {
    return absl::InternalError(absl::StrFormat("launch of cuda::%s failed: %s (%s)", name,
                                               cudaGetErrorString(error), cudaGetErrorName(error)));
  }
  return absl::OkStatus();
}

// Sum over a block whose size is a multiple of 32 (at most 1024); every
// thread gets the result. `scratch` holds 32 values; the order is fixed.
template <typename T>
__device__ __forceinline__ T BlockSum(T value, T* scratch) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

}  // namespace tessera::cuda::internal
