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
// into expert order); a row whose assignment_of_row is negative (an unused
// slot of the fixed-capacity layout, MoeCapacitySlots) is zero.
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

// ---- Routing bookkeeping (the balance statistics, the capacity rule, the
// combine weights), so that a device keeps it in its memory --------------

// The balance statistics of one routing: counts[e] = assignments to expert e
// (negative experts skipped), prob_sums[e] = sum over tokens of probs[t, e],
// in double, summed in token order. Both [experts], overwritten.
void MoeRoutingStatistics(const int32_t* expert_index, const float* probs, int64_t tokens,
                          int64_t experts, int64_t k, int64_t* counts, double* prob_sums);

// The balance loss of runtime/nn/moe.h's ComputeBalance from counts (over
// count_tokens tokens) and probability sums (over prob_tokens), all in
// double: out [2 * experts + 1] = [f_e | loss | load_e], where
// load_e = counts_e / (count_tokens * k) (0 when count_tokens == 0),
// f_e = experts * load_e, P_e = prob_sums_e / prob_tokens (the sum itself
// when prob_tokens == 0) and loss = sum_e coef * f_e * P_e in expert order.
void MoeBalance(const int64_t* counts, int64_t count_tokens, const double* prob_sums,
                int64_t prob_tokens, int64_t experts, int64_t k, double coef, double* out);

// The capacity rule (first come, first served in assignment order: token
// order, then top-k rank) laid out in fixed slots: expert e owns rows
// [e * capacity, (e + 1) * capacity). From the router's choice `chosen`
// [assignments]: expert_index = chosen, or -1 past the expert's capacity;
// row_of_assignment = e * capacity + (the assignment's rank among e's), or
// -1 when dropped; assignment_of_row [experts * capacity] the inverse, -1 on
// the unused slots; *dropped = the dropped count.
void MoeCapacitySlots(const int32_t* chosen, int64_t assignments, int64_t experts,
                      int64_t capacity, int32_t* expert_index, int32_t* row_of_assignment,
                      int32_t* assignment_of_row, int64_t* dropped);

// Top-k renormalization per token: w[t*k+s] = raw[t*k+s] / (1e-20 + sum_s raw)
// (the sum in slot order, fp32).
void MoeRenormalizeForward(const float* raw, float* weights, int64_t tokens, int64_t k);
// Its backward, in place: dw <- (dw - sum_s dw * w) / (1e-20 + sum_s raw).
void MoeRenormalizeBackward(const float* raw, const float* weights, float* dweights,
                            int64_t tokens, int64_t k);

// The balance loss's gradient on the router probabilities:
// dprobs[t, e] += float(scale * f[e] / divisor) (the factor in double).
void MoeBalanceGradient(const double* f, double scale, double divisor, float* dprobs,
                        int64_t tokens, int64_t experts);

}  // namespace tessera::cpu
