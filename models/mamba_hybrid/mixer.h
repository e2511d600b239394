// The Mamba-2 mixer (mamba_ssm's Mamba2, "Transformers are SSMs"):
//
//   [z, x, B, C, dt] = in_proj(u)                 [rows, 2 d_inner + 2 G N + H]
//   x, B, C = SiLU(causal depthwise conv1d([x, B, C]) + conv bias)
//   dt = softplus(dt + dt_bias),  A = -exp(A_log)
//   y = SSD(x, dt, A, B, C) + D x                 (chunked scan, fp32 states)
//   out = out_proj(RMSNorm_group(y * SiLU(z)) * norm.weight)
//
// with d_inner = expand * hidden, H = d_inner / head_dim heads and G groups
// (heads of a group share B and C). Initialization as the reference: dt_bias
// = softplus^-1(dt), dt log-uniform in [dt_min, dt_max] floored at
// dt_init_floor; A_log = log U(a_init_min, a_init_max); D = 1; norm weight 1;
// conv weight and bias U(+-1/sqrt(conv_width)) (PyTorch's Conv1d); in_proj
// U(+-1/sqrt(hidden)) and out_proj U(+-1/sqrt(d_inner)) / sqrt(num_layers)
// (PyTorch's Linear and mamba_ssm's prenorm-residual rescale). A_log, D,
// dt_bias, conv bias and the norm weight have no weight decay.
#pragma once

#include <string>

#include "models/mamba_hybrid/sublayers.h"
#include "runtime/config/config.pb.h"
#include "runtime/kernels/kernel_args.h"
#include "runtime/nn/linear.h"

namespace tessera::mamba_hybrid {

struct MixerDims {
  int64_t hidden, d_inner, heads, head_dim, groups, state_dim, conv_width, chunk;
  int64_t conv_channels() const { return d_inner + 2 * groups * state_dim; }  // x, B, C
  int64_t in_proj_out() const { return 2 * d_inner + 2 * groups * state_dim + heads; }
};
MixerDims ResolveMixerDims(const MambaHybridConfig& config);

class Mamba2Mixer : public Sublayer {
 public:
  // `name`: the layer's prefix, e.g. "layers.3.mixer".
  Mamba2Mixer(ParameterStore& store, const std::string& name, const MambaHybridConfig& config);

  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch,
                                 int64_t seq) override;
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy) override;
  double ForwardFlops(int64_t batch, int64_t seq) const override;
  double SavedFloatsPerToken() const override;
  absl::Status StartGeneration(Backend& backend, int64_t batch, int64_t max_len) override;
  absl::StatusOr<Tensor> Step(Arena& arena, const Tensor& x) override;

 private:
  // Column offsets of in_proj's output row.
  int64_t x_column() const { return dims_.d_inner; }
  int64_t dt_column() const { return dims_.d_inner + dims_.conv_channels(); }
  SsdShape ScanShape() const;
  // A = -exp(A_log) [H] in `arena`.
  Tensor DecayRates(Arena& arena) const;
  // dA_log += dA * A (A_log's chain rule; H values).
  void AccumulateDecayGradient(const Tensor& dA, const Tensor& A) const;

  ParameterStore& store_;
  MixerDims dims_;
  float norm_eps_;
  Linear in_proj_, out_proj_;
  ParameterStore::Id conv_weight_, conv_bias_, dt_bias_, a_log_, d_, norm_weight_;
  int64_t batch_ = 0, seq_ = 0;
  // Saved by Forward.
  Tensor zxbcdt_;     // [rows, in_proj_out]
  Tensor xbc_;        // [rows, conv_channels]: conv input
  Tensor xbc_conv_;   // conv output before SiLU
  Tensor x_, b_, c_;  // [rows, H*P], [rows, G*N], [rows, G*N]: after SiLU, contiguous
  Tensor dt_, a_;     // [rows, H], [H]
  Tensor y_, rstd_;   // [rows, d_inner] scan output, [rows, G] gated norm statistics
  // Generation: the last K-1 conv inputs [B, K-1, conv_channels] and the SSM
  // state [B, H, P, N].
  Tensor conv_state_, ssm_state_;
};

}  // namespace tessera::mamba_hybrid
