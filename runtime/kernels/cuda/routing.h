// Mixture-of-experts routing on the GPU: top-k, the stable sort of
// assignments by expert, and the permutation of token rows into expert order
// and back. The semantics of runtime/kernels/cpu/routing.h (assignment
// a = token * k + slot).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace tessera::cuda {

absl::Status TopKForward(const float* probs, int32_t* expert_index, float* weights,
                         int64_t tokens, int64_t experts, int64_t k, cudaStream_t stream);
absl::Status TopKBackward(const float* dweights, const int32_t* expert_index, float* dprobs,
                          int64_t tokens, int64_t experts, int64_t k, cudaStream_t stream);
// Negative experts (and, unlike the CPU kernel, which checks, experts >=
// `experts`) are dropped: row_of_assignment = -1.
absl::Status SortByExpert(const int32_t* expert_index, int64_t assignments, int64_t experts,
                          int64_t* expert_offsets, int32_t* row_of_assignment,
                          int32_t* assignment_of_row, cudaStream_t stream);
absl::Status PermuteForward(const float* x, const int32_t* assignment_of_row, float* out,
                            int64_t rows, int64_t dim, int64_t k, cudaStream_t stream);
absl::Status PermuteBackward(const float* dout, const int32_t* row_of_assignment, float* dx,
                             int64_t tokens, int64_t dim, int64_t k, cudaStream_t stream);
absl::Status UnpermuteCombineForward(const float* expert_out, const int32_t* row_of_assignment,
                                     const float* weights, float* out, int64_t tokens, int64_t dim,
                                     int64_t k, cudaStream_t stream);
absl::Status UnpermuteCombineBackward(const float* dout, const float* expert_out,
                                      const int32_t* row_of_assignment, const float* weights,
                                      float* dexpert_out, float* dweights, int64_t tokens,
                                      int64_t dim, int64_t k, cudaStream_t stream);


// The routing bookkeeping of runtime/kernels/cpu/routing.h. The probability
// sums are double, in a fixed tree per expert (deterministic; equal to the
// CPU's token-order sums up to rounding).
absl::Status MoeRoutingStatistics(const int32_t* expert_index, const float* probs, int64_t tokens,
                                  int64_t experts, int64_t k, int64_t* counts, double* prob_sums,
                                  cudaStream_t stream);
absl::Status MoeBalance(const int64_t* counts, int64_t count_tokens, const double* prob_sums,
                        int64_t prob_tokens, int64_t experts, int64_t k, double coef, double* out,
                        cudaStream_t stream);
absl::Status MoeCapacitySlots(const int32_t* chosen, int64_t assignments, int64_t experts,
                              int64_t capacity, int32_t* expert_index, int32_t* row_of_assignment,
                              int32_t* assignment_of_row, int64_t* dropped, cudaStream_t stream);
absl::Status MoeRenormalizeForward(const float* raw, float* weights, int64_t tokens, int64_t k,
                                   cudaStream_t stream);
absl::Status MoeRenormalizeBackward(const float* raw, const float* weights, float* dweights,
                                    int64_t tokens, int64_t k, cudaStream_t stream);
absl::Status MoeBalanceGradient(const double* f, double scale, double divisor, float* dprobs,
                                int64_t tokens, int64_t experts, cudaStream_t stream);

}  // namespace tessera::cuda
