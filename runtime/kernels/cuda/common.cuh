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

}  // namespace tessera::cuda::internal
