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
    const int32_t a = assignment_of_row[i / dim];
    out[i] = a < 0 ? 0.0f : x[(a / k) * dim + i % dim];  // a < 0: an unused slot
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

// ---- Routing bookkeeping -----------------------------------------------------

constexpr int kBookkeepingThreads = 256;

// One block per expert: the assignments to it and the sum of its router
// probabilities over the tokens, each thread a strided share, then a
// fixed-order block sum (deterministic run to run).
__global__ void RoutingStatisticsKernel(const int32_t* __restrict__ expert_index,
                                        const float* __restrict__ probs, int64_t tokens,
                                        int64_t experts, int64_t k, int64_t* __restrict__ counts,
                                        double* __restrict__ prob_sums) {
  __shared__ double scratch[32];
  __shared__ long long count_scratch[32];
  const int64_t e = blockIdx.x;
  long long count = 0;
  for (int64_t a = threadIdx.x; a < tokens * k; a += blockDim.x) count += expert_index[a] == e;
  double sum = 0;
  for (int64_t t = threadIdx.x; t < tokens; t += blockDim.x) sum += probs[t * experts + e];
  count = internal::BlockSum(count, count_scratch);
  sum = internal::BlockSum(sum, scratch);
  if (threadIdx.x == 0) {
    counts[e] = count;
    prob_sums[e] = sum;
  }
}

// One thread: E is small, and the loss adds its terms in expert order as the CPU.
__global__ void BalanceKernel(const int64_t* __restrict__ counts, int64_t count_tokens,
                              const double* __restrict__ prob_sums, int64_t prob_tokens,
                              int64_t experts, int64_t k, double coef, double* __restrict__ out) {
  double loss = 0;
  for (int64_t e = 0; e < experts; ++e) {
    const double share = count_tokens == 0 ? 0.0
                                           : static_cast<double>(counts[e]) /
                                                 static_cast<double>(count_tokens * k);
    const double f = share * static_cast<double>(experts);
    const double mean_prob =
        prob_tokens > 0 ? prob_sums[e] / static_cast<double>(prob_tokens) : prob_sums[e];
    out[e] = f;
    out[experts + 1 + e] = share;
    loss += coef * f * mean_prob;
  }
  out[experts] = loss;
}

// One block per expert walks the assignments in order, kBookkeepingThreads at
// a time: an exclusive scan of "is mine" gives each assignment its rank
// among the expert's (first come, first served), the rank its slot or its
// drop. *dropped (zeroed before) += the expert's assignments past its
// capacity (an integer atomic: the total does not depend on the order).
__global__ void CapacitySlotsKernel(const int32_t* __restrict__ chosen, int64_t assignments,
                                    int64_t capacity, int32_t* __restrict__ expert_index,
                                    int32_t* __restrict__ row_of_assignment,
                                    int32_t* __restrict__ assignment_of_row,
                                    int64_t* __restrict__ dropped) {
  __shared__ int32_t scan[kBookkeepingThreads];
  const int32_t e = static_cast<int32_t>(blockIdx.x);
  const int tid = threadIdx.x;
  int64_t taken = 0;  // the expert's assignments before this chunk
  for (int64_t start = 0; start < assignments; start += kBookkeepingThreads) {
    const int64_t a = start + tid;
    const int32_t mine = a < assignments && chosen[a] == e ? 1 : 0;
    scan[tid] = mine;
    __syncthreads();
    // Hillis-Steele inclusive scan over the block.
    for (int offset = 1; offset < kBookkeepingThreads; offset *= 2) {
      const int32_t add = tid >= offset ? scan[tid - offset] : 0;
      __syncthreads();
      scan[tid] += add;
      __syncthreads();
    }
    if (mine) {
      const int64_t rank = taken + scan[tid] - 1;
      if (rank < capacity) {
        const int64_t row = int64_t{e} * capacity + rank;
        expert_index[a] = e;
        row_of_assignment[a] = static_cast<int32_t>(row);
        assignment_of_row[row] = static_cast<int32_t>(a);
      } else {
        expert_index[a] = -1;
        row_of_assignment[a] = -1;
      }
    }
    taken += scan[kBookkeepingThreads - 1];
    __syncthreads();  // scan[] is rewritten by the next chunk
  }
  const int64_t used = taken < capacity ? taken : capacity;
  for (int64_t r = used + tid; r < capacity; r += kBookkeepingThreads) {
    assignment_of_row[int64_t{e} * capacity + r] = -1;
  }
  if (tid == 0 && taken > used) {
    atomicAdd(reinterpret_cast<unsigned long long*>(dropped),
              static_cast<unsigned long long>(taken - used));
  }
}

// Choices of an expert outside [0, experts) (the CPU kernel checks them):
// dropped, so that no slot is written out of bounds.
__global__ void CapacityOutOfRangeKernel(const int32_t* __restrict__ chosen, int64_t assignments,
                                         int64_t experts, int32_t* __restrict__ expert_index,
                                         int32_t* __restrict__ row_of_assignment) {
  TESSERA_CUDA_FOR(a, assignments) {
    if (chosen[a] < 0 || chosen[a] >= experts) {
      expert_index[a] = -1;
      row_of_assignment[a] = -1;
    }
  }
}

__global__ void RenormalizeForwardKernel(const float* __restrict__ raw, float* __restrict__ weights,
                                         int64_t tokens, int64_t k) {
  TESSERA_CUDA_FOR(t, tokens) {
    float sum = 1e-20f;
    for (int64_t s = 0; s < k; ++s) sum += raw[t * k + s];
    for (int64_t s = 0; s < k; ++s) weights[t * k + s] = raw[t * k + s] / sum;
  }
}

__global__ void RenormalizeBackwardKernel(const float* __restrict__ raw,
                                          const float* __restrict__ weights,
                                          float* __restrict__ dweights, int64_t tokens,
                                          int64_t k) {
  TESSERA_CUDA_FOR(t, tokens) {
    float sum = 1e-20f, dot = 0;
    for (int64_t s = 0; s < k; ++s) {
      sum += raw[t * k + s];
      dot += dweights[t * k + s] * weights[t * k + s];
    }
    for (int64_t s = 0; s < k; ++s) dweights[t * k + s] = (dweights[t * k + s] - dot) / sum;
  }
}

__global__ void BalanceGradientKernel(const double* __restrict__ f, double scale, double divisor,
                                      float* __restrict__ dprobs, int64_t tokens,
                                      int64_t experts) {
  TESSERA_CUDA_FOR(i, tokens * experts) {
    dprobs[i] += static_cast<float>(scale * f[i % experts] / divisor);
  }
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

absl::Status MoeRoutingStatistics(const int32_t* expert_index, const float* probs, int64_t tokens,
                                  int64_t experts, int64_t k, int64_t* counts, double* prob_sums,
                                  cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("MoeRoutingStatistics", tokens, experts));
  if (experts == 0) return absl::OkStatus();
  RoutingStatisticsKernel<<<static_cast<unsigned>(experts), kBookkeepingThreads, 0, stream>>>(
      expert_index, probs, tokens, experts, k, counts, prob_sums);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status MoeBalance(const int64_t* counts, int64_t count_tokens, const double* prob_sums,
                        int64_t prob_tokens, int64_t experts, int64_t k, double coef, double* out,
                        cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("MoeBalance", experts, k));
  BalanceKernel<<<1, 1, 0, stream>>>(counts, count_tokens, prob_sums, prob_tokens, experts, k,
                                     coef, out);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::Status MoeCapacitySlots(const int32_t* chosen, int64_t assignments, int64_t experts,
                              int64_t capacity, int32_t* expert_index, int32_t* row_of_assignment,
                              int32_t* assignment_of_row, int64_t* dropped, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("MoeCapacitySlots", assignments, experts));
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("MoeCapacitySlots", capacity));
  if (experts * capacity > INT32_MAX || assignments > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::MoeCapacitySlots: %d experts x capacity %d slots or %d assignments exceed int32 "
        "row indices",
        experts, capacity, assignments));
  }
  if (experts == 0) {
    TESSERA_CUDA(cudaMemsetAsync(dropped, 0, sizeof(int64_t), stream));
    return LaunchFlat("MoeCapacitySlots(range)", assignments, stream, CapacityOutOfRangeKernel,
                      chosen, assignments, experts, expert_index, row_of_assignment);
  }
  TESSERA_CUDA(cudaMemsetAsync(dropped, 0, sizeof(int64_t), stream));
  CapacitySlotsKernel<<<static_cast<unsigned>(experts), kBookkeepingThreads, 0, stream>>>(
      chosen, assignments, capacity, expert_index, row_of_assignment, assignment_of_row, dropped);
  TESSERA_CUDA_LAUNCH();
  return LaunchFlat("MoeCapacitySlots(range)", assignments, stream, CapacityOutOfRangeKernel,
                    chosen, assignments, experts, expert_index, row_of_assignment);
}

absl::Status MoeRenormalizeForward(const float* raw, float* weights, int64_t tokens, int64_t k,
                                   cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("MoeRenormalizeForward", tokens, k));
  return LaunchFlat("MoeRenormalizeForward", tokens, stream, RenormalizeForwardKernel, raw,
                    weights, tokens, k);
}

absl::Status MoeRenormalizeBackward(const float* raw, const float* weights, float* dweights,
                                    int64_t tokens, int64_t k, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("MoeRenormalizeBackward", tokens, k));
  return LaunchFlat("MoeRenormalizeBackward", tokens, stream, RenormalizeBackwardKernel, raw,
                    weights, dweights, tokens, k);
}

absl::Status MoeBalanceGradient(const double* f, double scale, double divisor, float* dprobs,
                                int64_t tokens, int64_t experts, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative("MoeBalanceGradient", tokens, experts));
  return LaunchFlat("MoeBalanceGradient", tokens * experts, stream, BalanceGradientKernel, f,
                    scale, divisor, dprobs, tokens, experts);
}

}  // namespace tessera::cuda
