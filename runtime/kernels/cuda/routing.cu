// MoE routing. Top-k is one thread per token (k and the expert count are
// small). The counting sort keeps its stability by giving each expert one
// thread that walks the assignments in order: O(assignments) per expert, no
// atomics, the same result as the CPU's sequential sort.
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda/routing.h"

namespace tessera::cuda {
namespace {

using internal::kRowsPerBlock;
using internal::kWarpSize;
using internal::LaunchFlat;
using internal::WarpSum;

// Larger probability first; equal probabilities by lower expert index.
__global__ void TopKKernel(const float* __restrict__ probs, int32_t* __restrict__ expert_index,
                           float* __restrict__ weights, int64_t tokens, int64_t experts,
                           int64_t k) {
  TESSERA_CUDA_FOR(t, tokens) {
    const float* p = probs + t * experts;
    for (int64_t s = 0; s < k; ++s) {
      int32_t best = -1;
      for (int64_t e = 0; e < experts; ++e) {
        bool taken = false;
        for (int64_t r = 0; r < s; ++r) taken |= expert_index[t * k + r] == e;
        if (taken) continue;
        // NaN never wins against a number; a row of NaNs still picks distinct experts.
        if (best < 0 || p[e] > p[best]) best = static_cast<int32_t>(e);
      }
      expert_index[t * k + s] = best;
      weights[t * k + s] = p[best];
    }
  }
}

__global__ void TopKBackwardKernel(const float* __restrict__ dweights,
                                   const int32_t* __restrict__ expert_index,
                                   float* __restrict__ dprobs, int64_t tokens, int64_t experts,
                                   int64_t k) {
  TESSERA_CUDA_FOR(a, tokens * k) { dprobs[(a / k) * experts + expert_index[a]] += dweights[a]; }
}

// expert_offsets[e + 1] = assignments of expert e (one thread per expert).
__global__ void CountKernel(const int32_t* __restrict__ expert_index, int64_t assignments,
                            int64_t experts, int64_t* expert_offsets) {
  TESSERA_CUDA_FOR(e, experts) {
    int64_t count = 0;
    for (int64_t a = 0; a < assignments; ++a) count += expert_index[a] == e;
    expert_offsets[e + 1] = count;
  }
}

__global__ void PrefixKernel(int64_t* expert_offsets, int64_t experts) {
  expert_offsets[0] = 0;
  for (int64_t e = 0; e < experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
}

// Rows of expert e in assignment order; dropped assignments get -1.
__global__ void PlaceKernel(const int32_t* __restrict__ expert_index, int64_t assignments,
                            int64_t experts, const int64_t* __restrict__ expert_offsets,
                            int32_t* __restrict__ row_of_assignment,
                            int32_t* __restrict__ assignment_of_row) {
  TESSERA_CUDA_FOR(e, experts + 1) {
    if (e == experts) {  // the extra thread: dropped assignments
      for (int64_t a = 0; a < assignments; ++a) {
        if (expert_index[a] < 0 || expert_index[a] >= experts) row_of_assignment[a] = -1;
      }
      for (int64_t r = expert_offsets[experts]; r < assignments; ++r) assignment_of_row[r] = -1;
      continue;
    }
    int64_t row = expert_offsets[e];
    for (int64_t a = 0; a < assignments; ++a) {
      if (expert_index[a] != e) continue;
      row_of_assignment[a] = static_cast<int32_t>(row);
      assignment_of_row[row++] = static_cast<int32_t>(a);
    }
  }
}

__global__ void PermuteForwardKernel(const float* __restrict__ x,
                                     const int32_t* __restrict__ assignment_of_row,
                                     float* __restrict__ out, int64_t rows, int64_t dim,
                                     int64_t k) {
  TESSERA_CUDA_FOR(i, rows * dim) {
    out[i] = x[(assignment_of_row[i / dim] / k) * dim + i % dim];
  }
}

__global__ void PermuteBackwardKernel(const float* __restrict__ dout,
                                      const int32_t* __restrict__ row_of_assignment,
                                      float* __restrict__ dx, int64_t tokens, int64_t dim,
                                      int64_t k) {
  TESSERA_CUDA_FOR(i, tokens * dim) {
    const int64_t t = i / dim, d = i % dim;
    float sum = 0.0f;
    for (int64_t s = 0; s < k; ++s) {
      const int32_t row = row_of_assignment[t * k + s];
      if (row >= 0) sum += dout[int64_t{row} * dim + d];
    }
    dx[i] = sum;
  }
}

__global__ void CombineForwardKernel(const float* __restrict__ expert_out,
                                     const int32_t* __restrict__ row_of_assignment,
                                     const float* __restrict__ weights, float* __restrict__ out,
                                     int64_t tokens, int64_t dim, int64_t k) {
  TESSERA_CUDA_FOR(i, tokens * dim) {
    const int64_t t = i / dim, d = i % dim;
    float sum = out[i];
    for (int64_t s = 0; s < k; ++s) {
      const int32_t row = row_of_assignment[t * k + s];
      if (row >= 0) sum += weights[t * k + s] * expert_out[int64_t{row} * dim + d];
    }
    out[i] = sum;
  }
}

__global__ void CombineBackwardRowsKernel(const float* __restrict__ dout,
                                          const int32_t* __restrict__ row_of_assignment,
                                          const float* __restrict__ weights,
                                          float* __restrict__ dexpert_out, int64_t tokens,
                                          int64_t dim, int64_t k) {
  TESSERA_CUDA_FOR(i, tokens * k * dim) {
    const int64_t a = i / dim, d = i % dim;
    const int32_t row = row_of_assignment[a];
    if (row >= 0) dexpert_out[int64_t{row} * dim + d] = weights[a] * dout[(a / k) * dim + d];
  }
}

// dweights[a] = dot(dout[t], expert_out[row]): one warp per assignment.
__global__ void CombineBackwardWeightsKernel(const float* __restrict__ dout,
                                             const float* __restrict__ expert_out,
                                             const int32_t* __restrict__ row_of_assignment,
                                             float* __restrict__ dweights, int64_t assignments,
                                             int64_t dim, int64_t k) {
  const int64_t a = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (a >= assignments) return;
  const int32_t row = row_of_assignment[a];
  float dot = 0.0f;
  if (row >= 0) {
    const float* g = dout + (a / k) * dim;
    const float* y = expert_out + int64_t{row} * dim;
    for (int64_t d = lane; d < dim; d += kWarpSize) dot += g[d] * y[d];
  }
  dot = WarpSum(dot);
  if (lane == 0) dweights[a] = dot;
}

}  // namespace

absl::Status TopKForward(const float* probs, int32_t* expert_index, float* weights,
                         int64_t tokens, int64_t experts, int64_t k, cudaStream_t stream) {
  if (k < 0 || k > experts) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cuda::TopKForward: k = %d is not in [0, experts = %d]", k, experts));
  }
  return LaunchFlat("TopKForward", tokens, stream, TopKKernel, probs, expert_index, weights,
                    tokens, experts, k);
}

absl::Status TopKBackward(const float* dweights, const int32_t* expert_index, float* dprobs,
                          int64_t tokens, int64_t experts, int64_t k, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("TopKBackward", experts, k));
  return LaunchFlat("TopKBackward", tokens * k, stream, TopKBackwardKernel, dweights,
                    expert_index, dprobs, tokens, experts, k);
}

absl::Status SortByExpert(const int32_t* expert_index, int64_t assignments, int64_t experts,
                          int64_t* expert_offsets, int32_t* row_of_assignment,
                          int32_t* assignment_of_row, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("SortByExpert", assignments, experts));
  TESSERA_CUDA(cudaMemsetAsync(expert_offsets, 0, (experts + 1) * sizeof(int64_t), stream));
  TESSERA_RETURN_IF_ERROR(LaunchFlat("SortByExpert(count)", experts, stream, CountKernel,
                                     expert_index, assignments, experts, expert_offsets));
  PrefixKernel<<<1, 1, 0, stream>>>(expert_offsets, experts);
  TESSERA_CUDA_LAUNCH();
  return LaunchFlat("SortByExpert(place)", experts + 1, stream, PlaceKernel, expert_index,
                    assignments, experts, expert_offsets, row_of_assignment, assignment_of_row);
}

absl::Status PermuteForward(const float* x, const int32_t* assignment_of_row, float* out,
                            int64_t rows, int64_t dim, int64_t k, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("PermuteForward", rows, dim));
  return LaunchFlat("PermuteForward", rows * dim, stream, PermuteForwardKernel, x,
                    assignment_of_row, out, rows, dim, k);
}

absl::Status PermuteBackward(const float* dout, const int32_t* row_of_assignment, float* dx,
                             int64_t tokens, int64_t dim, int64_t k, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("PermuteBackward", tokens, dim));
  return LaunchFlat("PermuteBackward", tokens * dim, stream, PermuteBackwardKernel, dout,
                    row_of_assignment, dx, tokens, dim, k);
}

absl::Status UnpermuteCombineForward(const float* expert_out, const int32_t* row_of_assignment,
                                     const float* weights, float* out, int64_t tokens, int64_t dim,
                                     int64_t k, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("UnpermuteCombineForward", tokens, dim));
  return LaunchFlat("UnpermuteCombineForward", tokens * dim, stream, CombineForwardKernel,
                    expert_out, row_of_assignment, weights, out, tokens, dim, k);
}

absl::Status UnpermuteCombineBackward(const float* dout, const float* expert_out,
                                      const int32_t* row_of_assignment, const float* weights,
                                      float* dexpert_out, float* dweights, int64_t tokens,
                                      int64_t dim, int64_t k, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckRows("UnpermuteCombineBackward", tokens * k, dim));
  TESSERA_RETURN_IF_ERROR(LaunchFlat("UnpermuteCombineBackward", tokens * k * dim, stream,
                                     CombineBackwardRowsKernel, dout, row_of_assignment, weights,
                                     dexpert_out, tokens, dim, k));
  if (tokens * k == 0) return absl::OkStatus();
  CombineBackwardWeightsKernel<<<internal::RowBlocks(tokens * k), kRowsPerBlock * kWarpSize, 0,
                                 stream>>>(dout, expert_out, row_of_assignment, dweights,
                                           tokens * k, dim, k);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

}  // namespace tessera::cuda
