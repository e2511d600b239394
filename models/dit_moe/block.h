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

// adaLN's affine-free LayerNorm and its modulation, fused into one pass each
// way (Backend::LayerNormModulate*): keeps the input and its row statistics
// [rows], not the normalized rows.
class NormModulate {
 public:
  static constexpr float kEps = 1e-6f;
  // x: [batch * seq, dim] -> LayerNorm(x) * (1 + scale[b]) + shift[b]; shift
  // and scale: one row per sample, `cond_stride` apart.
  Tensor Forward(Arena& arena, const Tensor& x, const float* shift, const float* scale,
                 int64_t batch, int64_t seq, int64_t cond_stride);
  // dx (a new tensor); dshift and dscale (rows as in Forward) accumulate.
  Tensor Backward(Arena& arena, const Tensor& dy, const float* scale, float* dshift,
                  float* dscale);

 private:
  Tensor x_, mean_, rstd_;
  int64_t batch_ = 0, seq_ = 0, cond_stride_ = 0;
};

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
  NormModulate norm1_, norm2_;
  std::unique_ptr<AttentionSublayer> attn_;
  std::unique_ptr<FfnSublayer> moe_;
  int64_t batch_ = 0, seq_ = 0;
  Tensor saved_mod_;     // [B, 6D]
  Tensor saved_attn_;    // attention output
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
  NormModulate norm_;
  Linear linear_;
  Tensor saved_mod_;
};

}  // namespace tessera::dit_moe
