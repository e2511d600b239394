// One DiT-MoE block with adaLN-Zero conditioning:
//   shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))   (zero-init)
//   x = x + gate1 * Attention(modulate(LayerNorm(x), shift1, scale1))
//   x = x + gate2 * MoE(modulate(LayerNorm(x), shift2, scale2))
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "models/dit_moe/sublayers.h"
#include "runtime/nn/layer_norm.h"
#include "runtime/nn/linear.h"

namespace tessera::dit_moe {

class DitBlock {
 public:
  // `mp` null: one process; otherwise the model-parallel sub-layers.
  static absl::StatusOr<std::unique_ptr<DitBlock>> Create(ParameterStore& store,
                                                          const std::string& name,
                                                          int64_t hidden, int64_t heads,
                                                          const MoeLayer::Options& moe,
                                                          const ModelParallel* mp);

  // x: [B*S, D] residual stream (S: this rank's tokens per sample);
  // cond_silu: [B, D] = SiLU(c). Returns the new residual stream. Everything
  // it saves lives in `arena`.
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, const Tensor& cond_silu,
                                 int64_t batch, int64_t seq);
  // dy: [B*S, D] -> dx; accumulates into dcond_silu [B, D].
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy, const Tensor& dcond_silu,
                                  float loss_scale);

  const FfnSublayer& moe() const { return *moe_; }
  double ForwardFlops(int64_t batch, int64_t seq) const;

 private:
  DitBlock(ParameterStore& store, const std::string& name, int64_t hidden);

  int64_t hidden_;
  std::unique_ptr<ModulationSublayer> ada_ln_;
  LayerNorm norm1_, norm2_;
  std::unique_ptr<AttentionSublayer> attn_;
  std::unique_ptr<FfnSublayer> moe_;
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
  // Under model parallelism the adaLN is column-parallel, and the linear runs
  // on this rank's rows (`linear_spec`: TensorPartial when those are a tp
  // shard, i.e. under Megatron SP).
  static absl::StatusOr<std::unique_ptr<FinalLayer>> Create(ParameterStore& store,
                                                            const std::string& name,
                                                            int64_t hidden, int64_t out_dim,
                                                            const ModelParallel* mp);
  // x: [B*S, D] -> [B*S, out_dim]
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, const Tensor& cond_silu,
                                 int64_t batch, int64_t seq);
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy, const Tensor& dcond_silu);
  double ForwardFlops(int64_t batch, int64_t seq) const {
    return ada_ln_->ForwardFlops(batch) + linear_.ForwardFlops(batch * seq);
  }

 private:
  FinalLayer(ParameterStore& store, const std::string& name, int64_t hidden, int64_t out_dim,
             const Linear::Options& linear_options);
  int64_t hidden_;
  std::unique_ptr<ModulationSublayer> ada_ln_;
  LayerNorm norm_;
  Linear linear_;
  int64_t batch_ = 0, seq_ = 0;
  Tensor saved_mod_, saved_h_;
};

}  // namespace tessera::dit_moe
