// Mixture-of-experts routing: top-k selection and permutation of token rows
// into expert-contiguous order and back.
//
// An "assignment" is one (token, slot) pair, a = token * k + slot, with
// expert_index[a] and weight[a].
#pragma once

#include <cstdint>

namespace tessera::cpu {

// For each token, the k largest of probs[t, :E] (ties: lower expert index
// first), in descending order. weights[a] = probs[t, expert_index[a]].
void TopKForward(const float* probs, int32_t* expert_index, float* weights, int64_t tokens,
                 int64_t experts, int64_t k);
// dprobs[t, expert_index[a]] += dweights[a]; dprobs must be zeroed by the caller.
void TopKBackward(const float* dweights, const int32_t* expert_index, float* dprobs,
                  int64_t tokens, int64_t experts, int64_t k);

// Stable counting sort of assignments by expert.
//   expert_offsets [E+1]: rows of expert e are [offsets[e], offsets[e+1]).
//   row_of_assignment [T*k]: where assignment a lands in expert order.
//   assignment_of_row [T*k]: the inverse permutation.
// Assignments whose expert_index is negative (dropped) are skipped: they get
// row_of_assignment = -1 and the row count is the number kept.
void SortByExpert(const int32_t* expert_index, int64_t assignments, int64_t experts,
                  int64_t* expert_offsets, int32_t* row_of_assignment,
                  int32_t* assignment_of_row);

// out[r, :] = x[assignment_of_row[r] / k, :] for r < rows  (token rows gathered
// into expert order).
void PermuteForward(const float* x, const int32_t* assignment_of_row, float* out, int64_t rows,
                    int64_t dim, int64_t k);
// dx[t, :] = sum over kept slots of dout[row_of_assignment[t*k+s], :]; dx overwritten.
void PermuteBackward(const float* dout, const int32_t* row_of_assignment, float* dx,
                     int64_t tokens, int64_t dim, int64_t k);

// out[t, :] += sum_s weights[t*k+s] * expert_out[row_of_assignment[t*k+s], :]
// (dropped assignments contribute nothing).
void UnpermuteCombineForward(const float* expert_out, const int32_t* row_of_assignment,
                             const float* weights, float* out, int64_t tokens, int64_t dim,
                             int64_t k);
// dexpert_out[row, :] = weight * dout[t, :] (overwritten; rows not kept are not
// touched); dweights[a] = dot(dout[t], expert_out[row]) (overwritten; 0 when
// dropped).
void UnpermuteCombineBackward(const float* dout, const float* expert_out,
                              const int32_t* row_of_assignment, const float* weights,
                              float* dexpert_out, float* dweights, int64_t tokens, int64_t dim,
                              int64_t k);

}  // namespace tessera::cpu
