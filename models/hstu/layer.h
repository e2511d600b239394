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
#pragma once

#include <cstdint>
#include <string>

#include "runtime/nn/layer_norm.h"
#include "runtime/nn/linear.h"
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
  // Registers <name>.uvqk.weight [fused, D] (normal 0.02, as the reference),
  // <name>.o.{weight [D, H dv] (Xavier), bias [D] (zeros)},
  // <name>.pos_bias [2n - 1] and <name>.time_bias [buckets + 1] (normal 0.02).
  HstuLayer(ParameterStore& store, const std::string& name, const HstuLayerDims& dims);

  // x: [total, D] -> y [total, D]. `dropout_mask` ([total, H dv], values 0
  // or 1 / (1 - p)) or undefined for none. Keeps what Backward needs.
  Tensor Forward(Arena& arena, const Tensor& x, const JaggedTokens& tokens,
                 const Tensor& dropout_mask);
  // dy: [total, D] -> dx [total, D]; parameter gradients accumulate.
  Tensor Backward(Arena& arena, const Tensor& dy);

  const HstuLayerDims& dims() const { return dims_; }
  // Forward FLOPs of the projections for `tokens` tokens (attention apart).
  double ProjectionFlops(int64_t tokens) const;

 private:
  ParameterStore& store_;
  HstuLayerDims dims_;
  LayerNorm input_norm_;
  Linear uvqk_, o_;
  ParameterStore::Id pos_bias_, time_bias_;
  // Saved by Forward.
  JaggedTokens tokens_;
  Tensor projected_;  // [total, fused] before SiLU
  Tensor fused_;      // [total, fused] = SiLU(projected_)
  Tensor attention_;  // [total, H dv] = A V
  Tensor gate_mean_, gate_rstd_;  // [total]
  Tensor dropout_mask_;
};

}  // namespace tessera::hstu
