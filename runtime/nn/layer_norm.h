// LayerNorm over the last dimension, with or without learned affine.
#pragma once

#include <string>

#include "runtime/nn/parameter.h"
#include "runtime/tensor/arena.h"

namespace tessera {

class LayerNorm {
 public:
  // affine=false registers no parameters (DiT's norms are affine-free: adaLN
  // supplies the scale and shift).
  LayerNorm(ParameterStore& store, const std::string& name, int64_t dim, bool affine,
            float eps = 1e-6f);

  // x: [rows, dim] -> [rows, dim]
  Tensor Forward(Arena& arena, const Tensor& x);
  Tensor Backward(Arena& arena, const Tensor& dy);

 private:
  ParameterStore& store_;
  int64_t dim_;
  float eps_;
  ParameterStore::Id gamma_ = -1, beta_ = -1;
  Tensor saved_x_, saved_mean_, saved_rstd_;
};

}  // namespace tessera
