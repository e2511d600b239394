// One DiT-MoE block with adaLN-Zero conditioning:
//   shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))   (zero-init)
//   x = x + gate1 * Attention(modulate(LayerNorm(x), shift1, scale1))
//   x = x + gate2 * MoE(modulate(LayerNorm(x), shift2, scale2))
#pragma once

#include <string>

#include "runtime/nn/attention.h"
#include "runtime/nn/layer_norm.h"
#include "runtime/nn/moe.h"

namespace tessera::dit_moe {

class DitBlock {
 public:
  DitBlock(ParameterStore& store, const std::string& name, int64_t hidden, int64_t heads,
           const MoeLayer::Options& moe);

  // x: [B*S, D] residual stream; cond_silu: [B, D] = SiLU(c). Returns the new
  // residual stream. Everything it saves lives in `arena`.
  Tensor Forward(Arena& arena, const Tensor& x, const Tensor& cond_silu, int64_t batch,
                 int64_t seq);
  // dy: [B*S, D] -> dx; accumulates into dcond_silu [B, D].
  Tensor Backward(Arena& arena, const Tensor& dy, const Tensor& dcond_silu, float loss_scale);

  const MoeLayer& moe() const { return moe_; }
  double ForwardFlops(int64_t batch, int64_t seq) const;

 private:
  int64_t hidden_;
  Linear ada_ln_;
  LayerNorm norm1_, norm2_;
  MultiHeadAttention attn_;
  MoeLayer moe_;
  int64_t batch_ = 0, seq_ = 0;
  Tensor saved_mod_;     // [B, 6D]
  Tensor saved_h1_;      // norm1(x)
  Tensor saved_attn_;    // attention output
  Tensor saved_h2_;      // norm2(x1)
  Tensor saved_moe_;     // MoE output
};

// The final layer: adaLN (shift, scale) -> LayerNorm -> modulate -> Linear to
// patch pixels. adaLN and the linear are zero-initialized.
class FinalLayer {
 public:
  FinalLayer(ParameterStore& store, const std::string& name, int64_t hidden, int64_t out_dim);
  // x: [B*S, D] -> [B*S, out_dim]
  Tensor Forward(Arena& arena, const Tensor& x, const Tensor& cond_silu, int64_t batch,
                 int64_t seq);
  Tensor Backward(Arena& arena, const Tensor& dy, const Tensor& dcond_silu);
  double ForwardFlops(int64_t batch, int64_t seq) const {
    return ada_ln_.ForwardFlops(batch) + linear_.ForwardFlops(batch * seq);
  }

 private:
  int64_t hidden_;
  Linear ada_ln_;
  LayerNorm norm_;
  Linear linear_;
  int64_t batch_ = 0, seq_ = 0;
  Tensor saved_mod_, saved_h_;
};

}  // namespace tessera::dit_moe
