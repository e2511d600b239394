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
// LayerNorm of A V spans every head's output, so under tp the layer
// all-gathers A V and U over tp (columns in head order), computes the
// norm-gate on the whole row as one process does, and keeps its heads'
// columns; backward all-gathers the gate's gradient likewise. The relative
// attention bias is shared across heads: each tp rank's gradient covers its
// heads only (ParallelSpec::TensorPartial, summed over tp by the reduction).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
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
  // (normal 0.02). `tp` (heads % tp.size() == 0, checked by the config rules)
  // must outlive the layer.
  static absl::StatusOr<std::unique_ptr<HstuLayer>> Create(ParameterStore& store,
                                                           parallel::Communicator& tp,
                                                           const std::string& name,
                                                           const HstuLayerDims& dims);

  // x: [total, D] -> y [total, D] (the same rows on every tp rank).
  // `dropout_mask` ([total, H dv] over all heads, values 0 or 1 / (1 - p)) or
  // undefined for none. Keeps what Backward needs.
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, const JaggedTokens& tokens,
                                 const Tensor& dropout_mask);
  // dy: [total, D] -> dx [total, D]; parameter gradients accumulate.
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy);

  const HstuLayerDims& dims() const { return dims_; }
  // Forward FLOPs this tp rank computes for a user of `length` tokens: the
  // projections and the causal attention of its heads (H / tp of them).
  double ForwardFlops(int64_t length) const;

 private:
  HstuLayer(ParameterStore& store, parallel::Communicator& tp, const std::string& name,
            const HstuLayerDims& dims);
  // Rows of columns `stride` floats apart (a view into a wider matrix).
  struct Columns {
    float* data = nullptr;
    int64_t stride = 0;
  };
  // [rows, cols] of this rank's heads -> [rows, tp * cols] of every head, in
  // head order (an all-gather over tp; tp > 1).
  absl::StatusOr<Tensor> GatherHeads(Arena& arena, Columns local, int64_t rows, int64_t cols);
  // This rank's [rows, cols] of `whole` [rows, tp * cols] into `local`.
  void KeepHeads(Arena& arena, Columns whole, Columns local, int64_t rows, int64_t cols);

  ParameterStore& store_;
  parallel::Communicator& tp_;
  HstuLayerDims dims_;   // all heads
  HstuLayerDims local_;  // this rank's heads
  LayerNorm input_norm_;
  std::unique_ptr<parallel::ColumnParallelLinear> uvqk_;
  std::unique_ptr<parallel::RowParallelLinear> o_;
  ParameterStore::Id pos_bias_ = -1, time_bias_ = -1;
  // Saved by Forward.
  JaggedTokens tokens_;
  Tensor projected_;  // [total, fused / tp] before SiLU
  Tensor fused_;      // [total, fused / tp] = SiLU(projected_): [U | V | Q | K] of local heads
  Tensor attention_;  // [total, H dv / tp] = A V of local heads
  Columns all_attention_, all_u_;  // [total, H dv] of every head (into the above at tp 1)
  Tensor gate_mean_, gate_rstd_;  // [total]
  Tensor dropout_mask_;
};

}  // namespace tessera::hstu
