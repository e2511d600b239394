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
#include <utility>
#include <vector>

#include "models/mamba_hybrid/layout.h"
#include "models/mamba_hybrid/sublayers.h"
#include "parallel/sequence_parallel/shard_chain.h"
#include "runtime/config/config.pb.h"
#include "runtime/kernels/kernel_args.h"

namespace tessera::mamba_hybrid {

struct MixerDims {
  int64_t hidden, d_inner, heads, head_dim, groups, state_dim, conv_width, chunk;
  int64_t conv_channels() const { return d_inner + 2 * groups * state_dim; }  // x, B, C
  int64_t in_proj_out() const { return 2 * d_inner + 2 * groups * state_dim + heads; }
};
MixerDims ResolveMixerDims(const MambaHybridConfig& config);

// Tensor parallelism splits heads and groups over tp (nheads % tp and
// ngroups % tp: config rules), so every rank holds whole heads and groups:
// in_proj is column-parallel with each of its blocks z, x, B, C, dt a
// parameter of its own split over tp (in_proj.weight.z, ...: blocks of
// unequal widths cannot share one split), conv1d likewise per x, B, C
// block, A_log, D, dt_bias and the norm weight split with their heads, the
// gated RMSNorm by group local, out_proj row-parallel.
//
// Sequence parallelism has two strategies (model.mamba_hybrid.mamba_sp_mode)
// around the same computation:
//  - STATE_PASSING: the sp ranks form a chain (ShardChain): each shard's
//    conv reads the previous shard's last K-1 inputs as its halo; the shards
//    scan at once from zero states and then correct their outputs and final
//    states with the previous shard's final state (Scan); the backward pass
//    returns d(initial state) and d(halo) to the previous shard.
//  - ALL_TO_ALL (Megatron-LM's Mamba context parallelism): after in_proj an
//    all-to-all over sp trades the sequence shard for heads / sp heads and
//    groups / sp groups of the whole sequence (SequenceToHeads); the conv,
//    the scan and the gated norm run on those, the chain being a group of
//    one, with the matching slices of the conv weights, dt_bias, A_log, D and
//    the norm weight; another all-to-all returns the sequence shard before
//    out_proj. The parameters stay whole on every sp rank: each rank's
//    gradient covers its slices, and the sum over sp (as for every parameter
//    under sp) the whole.
class Mamba2Mixer : public Sublayer {
 public:
  // `name`: the layer's prefix, e.g. "layers.3.mixer".
  Mamba2Mixer(ParameterStore& store, const std::string& name, const MambaHybridConfig& config,
              const HybridLayout& layout);

  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch,
                                 int64_t seq) override;
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy) override;
  double ForwardFlops(int64_t batch, int64_t seq) const override;
  double SavedFloatsPerToken() const override;
  absl::Status StartGeneration(Backend& backend, int64_t batch, int64_t max_len) override;
  absl::StatusOr<Tensor> Step(Arena& arena, const Tensor& x) override;

 private:
  // Column offsets of in_proj's output row (this rank's heads).
  int64_t x_column() const { return dims_.d_inner; }
  int64_t dt_column() const { return dims_.d_inner + dims_.conv_channels(); }
  SsdShape ScanShape() const;
  // A = -exp(A_log) [H] in `arena`.
  Tensor DecayRates(Arena& arena) const;
  // dA_log += dA * A (A_log's chain rule; H values).
  void AccumulateDecayGradient(const Tensor& dA, const Tensor& A) const;
  // The conv weight [channels, K] and bias [channels] of this rank's
  // channels of the x, B, C pieces, contiguous in `arena`; and their
  // gradients added back to the pieces.
  std::pair<Tensor, Tensor> ConvWeights(Arena& arena) const;
  void AccumulateConvGradients(const Tensor& dweight, const Tensor& dbias) const;
  // The scan's output y_ [rows, d_inner] from x_, dt_, a_, b_, c_ under
  // sequence parallelism: every shard scans from a zero state at once; then
  // the final states pass along the chain (ours = from-zero + decay * the
  // previous shard's), and each shard adds the previous state's
  // state-to-output term. Backward: the same three steps in reverse.
  absl::Status Scan(Arena& arena);
  // exp(A_h * sum over this shard of dt) [B, H]; target += decay * state
  // per (b, h) block [P, N].
  Tensor ShardDecay(Arena& arena) const;
  void AddDecayed(const Tensor& target, const Tensor& decay, const Tensor& state) const;
  // Its backward from dy: d(x, B, C) after SiLU [rows, conv_channels], and
  // ddt written into dt's columns of dzxbcdt; passes d(initial state) back.
  absl::StatusOr<Tensor> ScanBackward(Arena& arena, const Tensor& dy, Tensor& dzxbcdt);
  // Sequence parallelism: the previous shard's last K-1 conv inputs (halo_),
  // and the gradient of this shard's own (added into dxbc).
  absl::Status ExchangeHalo(Arena& arena);
  absl::Status ReturnHaloGradient(Arena& arena, const Tensor& dhalo, Tensor& dxbc);
  // [first channel, count] of this rank's heads (x) and groups (B, C) in
  // each conv piece.
  std::vector<std::pair<int64_t, int64_t>> ConvChannels() const;
  // This rank's first head of a per-head parameter or gradient: [H] values
  // (dt_bias, A_log, D) or [H * P] (the norm weight: `per_head` P).
  float* Heads(const Tensor& t, int64_t per_head = 1) const {
    return t.ptr<float>() + first_head_ * per_head;
  }
  // In-proj's blocks z, x, B, C, dt (this tp rank's widths) for the
  // all-to-all; out_proj's input is one block, d_inner / tp.
  std::vector<int64_t> InProjWidths() const;

  ParameterStore& store_;
  HybridLayout layout_;
  // STATE_PASSING: the chain is sp, the head exchange a group of one;
  // ALL_TO_ALL: the reverse.
  parallel::SingleRankCommunicator one_rank_;
  parallel::ShardChain chain_;
  parallel::Communicator* head_exchange_;
  // This rank's: d_inner, heads and groups divided by tp (and by sp under
  // ALL_TO_ALL); its first head and group among the tp rank's.
  MixerDims dims_;
  int64_t first_head_ = 0, first_group_ = 0;
  float norm_eps_;
  std::vector<ProjectionPiece> in_proj_;  // z, x, B, C, dt: [width/tp, hidden] each
  ParameterStore::Id out_proj_;           // [hidden, d_inner/tp]
  std::vector<ParameterStore::Id> conv_weight_, conv_bias_;  // x, B, C pieces
  ParameterStore::Id dt_bias_, a_log_, d_, norm_weight_;
  int64_t batch_ = 0, seq_ = 0;
  // Saved by Forward.
  Tensor u_;          // [rows, hidden]: in_proj input (the tp region's rows)
  // From here to y_ and rstd_, rows are this rank's heads' (under ALL_TO_ALL
  // every position of the batch, batch * seq_).
  Tensor zxbcdt_;     // [rows, in_proj_out]
  Tensor xbc_;        // [rows, conv_channels]: conv input
  Tensor halo_;       // [B, K-1, conv_channels]: the previous shard's (sp > 1)
  Tensor xbc_conv_;   // conv output before SiLU
  Tensor x_, b_, c_;  // [rows, H*P], [rows, G*N], [rows, G*N]: after SiLU, contiguous
  Tensor dt_, a_;     // [rows, H], [H]
  Tensor initial_state_;  // [B, H, P, N]: the previous shard's final state (sp > 1)
  Tensor decay_;          // [B, H]: exp(A * sum of the shard's dt) (sp > 1)
  Tensor y_, rstd_;   // [rows, d_inner] scan output, [rows, G] gated norm statistics
  Tensor normed_;     // out_proj input: the tp region's rows, d_inner * (sp under ALL_TO_ALL)
  // Generation: the last K-1 conv inputs [B, K-1, conv_channels] and the SSM
  // state [B, H, P, N].
  Tensor conv_state_, ssm_state_;
};

}  // namespace tessera::mamba_hybrid
