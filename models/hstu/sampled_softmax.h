// The sampled softmax loss of the reference (SampledSoftmaxLoss with
// uniformly sampled negatives): for each supervised token t with output u_t
// (unit length) and target item p_t, against K negatives n_t1..n_tK,
//
//   logit_t0 = cos(u_t, e[p_t]) / temperature,  logit_tk = cos(u_t, e[n_tk]) / temperature
//   loss_t   = -log softmax(logit_t)[0]
//
// e = the item table; cos normalises the item rows (the reference's
// item_l2_norm). A negative equal to the target is masked out (its logit
// takes -1e9: it drops out of the softmax and gets no gradient), as the
// reference does with -5e4. The negatives are drawn from a counter-based
// stream keyed by (seed, step) at counter token_key * K + k, so every layout
// draws the same ones.
#pragma once

#include <cstdint>
#include <vector>

#include "models/hstu/batch.h"
#include "parallel/sequence_parallel/jagged_ulysses.h"
#include "runtime/tensor/arena.h"

namespace tessera::hstu {

// Row t of the returned candidates is [target_t, n_t1, …, n_tK], and mask
// row t is 0 where the candidate counts and -1e9 where a negative collides
// with the target. Both [T * (1 + K)].
struct Candidates {
  std::vector<int32_t> ids;
  std::vector<float> mask;
  int64_t per_token = 0;  // 1 + K
};
Candidates SampleCandidates(const HstuBatch& batch, int64_t negatives, int64_t num_items,
                            uint64_t seed, int64_t step);
// The candidates of tokens [range.begin, range.end) only (an sp rank's):
// rows equal to those rows of the whole batch's.
Candidates SampleCandidates(const HstuBatch& batch, parallel::TokenRange range,
                            int64_t negatives, int64_t num_items, uint64_t seed, int64_t step);

class SampledSoftmax {
 public:
  SampledSoftmax(int64_t dim, float temperature) : dim_(dim), temperature_(temperature) {}

  // outputs: [T, D] unit rows; the candidates' item rows as `distinct`
  // [U, D] (each distinct item once, looked up from the item table, which
  // may be row-sharded) and `slots` i32 [T (1 + K)] (candidate i's row is
  // distinct[slots[i]]), all in the backend's memory and alive until
  // Backward. Each distinct row is normalised once. Writes the mean loss
  // over the T tokens (0 when T = 0) to *loss, one double in the backend's
  // memory (the host does not wait for it). Keeps what Backward needs.
  void Forward(Arena& arena, const Tensor& outputs, const Tensor& distinct, const Tensor& slots,
               const Candidates& candidates, double* loss);
  // Returns d outputs [T, D] and adds to `ddistinct` [U, D] the distinct
  // rows' gradient, both of scale * (the sum of the T per-token losses).
  Tensor Backward(Arena& arena, const Tensor& ddistinct, float scale);

 private:
  int64_t dim_;
  float temperature_;
  int64_t tokens_ = 0, per_token_ = 0;
  Tensor outputs_, targets_;
  Tensor distinct_, slots_;       // [U, D], [T (1 + K)]
  Tensor unit_distinct_, rstd_;   // normalised, [U, D] and [U]
  Tensor probs_;                  // [T, 1 + K]
};

}  // namespace tessera::hstu
