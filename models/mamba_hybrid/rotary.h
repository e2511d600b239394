// Rotary position embeddings (RoPE, Su et al. 2021) in the rotate-half form
// of GPT-NeoX, llama and Megatron-Core: in every head, the pair of dims
// (i, i + Dh/2), i < Dh/2, at position p is rotated by the angle p * theta_i
// with theta_i = base^(-2i / Dh):
//
//   y_i        = x_i cos(p theta_i) - x_{i+Dh/2} sin(p theta_i)
//   y_{i+Dh/2} = x_{i+Dh/2} cos(p theta_i) + x_i sin(p theta_i)
//
// Built from the backends' existing ops (copies and the per-row broadcast
// multiply-add of GatedResidualForward), so it runs wherever they do. The
// angles are computed once on the host in double for the positions asked
// so far, and kept on the backend as cos and signed-sin tables.
#pragma once

#include <cstdint>

#include "runtime/tensor/arena.h"

namespace tessera::mamba_hybrid {

class RotaryEmbedding {
 public:
  // head_dim even (config rules); base > 0.
  RotaryEmbedding(double base, int64_t head_dim);

  // Rotates, in place, the first `heads` heads ([heads, head_dim], one after
  // the other) of each row of x: batch * seq rows (sample-major) `row_stride`
  // floats apart, row t of a sample at position first_position + t.
  // inverse: by the negative angles, the rotation's transpose (the backward
  // pass maps the output gradient to the input's with it).
  void Apply(Arena& arena, float* x, int64_t row_stride, int64_t batch, int64_t seq,
             int64_t heads, int64_t first_position, bool inverse);

  // Makes the tables cover positions [0, positions) (Apply grows them itself).
  void Reserve(Backend& backend, int64_t positions);

 private:
  double base_;
  int64_t head_dim_;
  int64_t positions_ = 0;
  // [positions, head_dim]: cos(p theta) on both halves; the rotate-half
  // sines [-sin, +sin] (forward) and [+sin, -sin] (inverse).
  Tensor cos_, sin_, inverse_sin_;
};

}  // namespace tessera::mamba_hybrid
