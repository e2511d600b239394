// Multi-head self-attention: fused QKV projection (with bias, as timm/DiT),
// memory-efficient scaled dot-product attention, output projection.
#pragma once

#include <string>

#include "runtime/nn/linear.h"

namespace tessera {

class MultiHeadAttention {
 public:
  MultiHeadAttention(ParameterStore& store, const std::string& name, int64_t hidden,
                     int64_t heads, bool causal = false);

  // x: [batch*seq, hidden] -> [batch*seq, hidden]
  Tensor Forward(Arena& arena, const Tensor& x, int64_t batch, int64_t seq);
  Tensor Backward(Arena& arena, const Tensor& dy);

  double ForwardFlops(int64_t batch, int64_t seq) const;

  // The fused q/k/v projection's options: three stacked output blocks, so W
  // is registered as [3, hidden, hidden] (Linear::Options::out_blocks). Every
  // attention layer that registers these weights uses it.
  static Linear::Options QkvOptions();

 private:
  int64_t hidden_, heads_;
  bool causal_;
  Linear qkv_, proj_;
  int64_t batch_ = 0, seq_ = 0;
  Tensor saved_qkv_, saved_out_, saved_lse_;
};

}  // namespace tessera
