// One HSTU layer ("Actions Speak Louder than Words", Meta 2024; the
// reference's SequentialTransductionUnitJagged) on a jagged batch:
//
//   x̂ = LayerNorm(x)                                  (no affine, eps 1e-6)
//   U, V, Q, K = split(SiLU(x̂ W_uvqk))                 (no bias; the reference's order)
//   A V with a_ij = SiLU(q_i . k_j + rab_ij) / n       (causal, per user; n = max_len)
//   y = x + W_o dropout(U ⊙ LayerNorm(A V)) + b_o
//
// rab = a learned Toeplitz position bias [2n - 1] + a learned time bias by
// log bucket [num_time_buckets + 1], shared across heads (docs/hstu.md).
// Tokens are the concatenation of the batch's users ([total, dim]); nothing
// is padded.
//
// Tensor parallelism over heads (a tp group of one on one process, the same
// code): W_uvqk is column-parallel, rank r holding the U, V, Q and K columns
// of heads [r H/tp, (r+1) H/tp), and runs attention on those heads; W_o is
// row-parallel (partial sums all-reduced over tp, b_o added once). The
// LayerNorm of A V spans every head's output, so under tp its row
// statistics are sums over the tp ranks' columns: forward all-reduces each
// token's sum and then its sum of squares about the mean, backward the two
// sums of the norm's gradient (one or two floats per token, not the rows);
// each rank gates its own heads' columns. The relative
// attention bias is shared across heads: each tp rank's gradient covers its
// heads only (ParallelSpec::TensorPartial, summed over tp by the reduction).
//
// Sequence parallelism (Ulysses over the jagged batch, an sp group of one on
// one process): each sp rank holds a contiguous range of the batch's tokens
// (parallel/sequence_parallel/jagged_ulysses.h) and runs everything but
// attention on it; around attention an all-to-all over sp trades the range
// for a share of this tp rank's heads (H / (tp sp) of them) over every
// token, so each user's attention is computed whole. The bias gradients of
// an sp rank cover its heads (summed over dp x sp with every other
// gradient).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "parallel/sequence_parallel/jagged_ulysses.h"
#include "parallel/tensor_parallel/linear.h"
#include "runtime/nn/layer_norm.h"
#include "runtime/nn/parameter.h"
#include "runtime/tensor/arena.h"

namespace tessera::hstu {

struct HstuLayerDims {
  int64_t dim = 0;            // embedding width D
  int64_t heads = 0;          // H
  int64_t attention_dim = 0;  // q, k width per head
  int64_t linear_dim = 0;     // u, v width per head
  int64_t max_len = 0;        // n: the normaliser and the position table
  int32_t num_time_buckets = 0;
  // Width of the fused projection [U | V | Q | K].
  int64_t fused() const { return heads * (2 * linear_dim + 2 * attention_dim); }
  int64_t gated() const { return heads * linear_dim; }
  // The dims of one tp rank's heads (heads / tp of them).
  HstuLayerDims Local(int tp) const {
    HstuLayerDims local = *this;
    local.heads = heads / tp;
    return local;
  }
};

// Where a batch's users are, in the backend's memory (valid while the
// layers' forward and backward run).
struct JaggedTokens {
  const int64_t* offsets = nullptr;           // [users + 1]
  int64_t users = 0;
  int64_t total = 0;                          // tokens
  parallel::TokenRange mine;                  // this sp rank's tokens (all of them at sp 1)
  const int64_t* timestamps = nullptr;        // [total]
  const int64_t* query_timestamps = nullptr;  // [total]: HstuQueryTimestamps
};

// x ⊙ mask [rows, width] as a new tensor: dropout with a mask of 0 and
// 1 / (1 - p) (DropoutMask, model.h), and its backward with the same mask.
// The product is a gated residual into zeros, gate row r = mask row r.
Tensor ApplyDropout(Arena& arena, const Tensor& x, const Tensor& mask);

class HstuLayer {
 public:
  // Registers <name>.uvqk.weight (normal 0.02, as the reference): [4, H dv,
  // D] (blocks U, V, Q, K, split over tp along dim 1) when linear_dim ==
  // attention_dim, else [fused, D] (tp must be 1: the blocks differ in
  // width); <name>.o.{weight [D, H dv] (Xavier, split along dim 1), bias [D]
  // (zeros)}, <name>.pos_bias [2n - 1] and <name>.time_bias [buckets + 1]
  // (normal 0.02). `tp` and `sp` (heads % (tp.size() sp.size()) == 0,
  // checked by the config rules) must outlive the layer.
  static absl::StatusOr<std::unique_ptr<HstuLayer>> Create(ParameterStore& store,
                                                           parallel::Communicator& tp,
                                                           parallel::Communicator& sp,
                                                           const std::string& name,
                                                           const HstuLayerDims& dims);

  // x: [tokens.mine.size(), D], this sp rank's tokens -> y of the same
  // shape (the same rows on every tp rank). `dropout_mask` ([tokens.mine.size(),
  // H dv] over all heads, values 0 or 1 / (1 - p)) or undefined for none.
  // Keeps what Backward needs. Collective over tp and sp.
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, const JaggedTokens& tokens,
                                 const Tensor& dropout_mask);
  // dy -> dx, both [tokens.mine.size(), D]; parameter gradients accumulate.
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy);

  const HstuLayerDims& dims() const { return dims_; }
  // Forward FLOPs this rank computes for a user of `length` tokens: its
  // share (1 / sp) of the projections of its tp heads, and the causal
  // attention of its heads (H / (tp sp) of them).
  double ForwardFlops(int64_t length) const;

 private:
  HstuLayer(ParameterStore& store, parallel::Communicator& tp, parallel::Communicator& sp,
            const std::string& name, const HstuLayerDims& dims);
  // Attention of this rank's heads over `v`, `q`, `k` (this sp rank's tokens,
  // columns of every head of this tp rank, rows `stride` apart) into
  // attention_; under sp through the head exchange (keeps heads_vqk_).
  absl::Status Attend(Arena& arena, float* v, float* q, float* k, int64_t stride);
  // Its backward: dattention_ -> dv, dq, dk (overwritten, same layout).
  absl::Status AttendBackward(Arena& arena, const Tensor& dattention, float* dv, float* dq,
                              float* dk, int64_t stride);
  // t (device memory, every element) summed over tp in place.
  absl::Status SumOverTp(const Tensor& t);

  ParameterStore& store_;
  parallel::Communicator& tp_;
  parallel::Communicator& sp_;
  HstuLayerDims dims_;   // all heads
  HstuLayerDims local_;  // this tp rank's heads (the projections)
  HstuLayerDims attend_;  // this rank's heads in attention: local_ over sp
  LayerNorm input_norm_;
  std::unique_ptr<parallel::ColumnParallelLinear> uvqk_;
  std::unique_ptr<parallel::RowParallelLinear> o_;
  ParameterStore::Id pos_bias_ = -1, time_bias_ = -1;
  // Saved by Forward.
  JaggedTokens tokens_;
  std::unique_ptr<parallel::JaggedUlysses> exchange_;  // sp > 1
  Tensor heads_vqk_;  // [total, (H dv + 2 H dqk) / (tp sp)]: attention's inputs under sp
  // Rows: this sp rank's tokens.
  Tensor projected_;  // [rows, fused / tp] before SiLU
  Tensor fused_;      // [rows, fused / tp] = SiLU(projected_): [U | V | Q | K] of local heads
  Tensor attention_;  // [rows, H dv / tp] = A V of local heads
  Tensor gate_mean_, gate_rstd_;  // [rows]: the norm's statistics over every head
  Tensor dropout_mask_;  // [rows, H dv / tp]: this rank's columns of the mask
};

}  // namespace tessera::hstu
