#include "models/hstu/layer.h"

#include <cmath>

#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/nn/linear.h"

namespace tessera::hstu {
namespace {

constexpr float kNormEps = 1e-6f;  // the reference's layer norms

}  // namespace

Tensor ApplyDropout(Arena& arena, const Tensor& x, const Tensor& mask) {
  const int64_t rows = x.dim(0), width = x.dim(1);
  Tensor y = arena.Allocate(DType::kF32, Shape{rows, width});  // zeros
  arena.backend().GatedResidualForward(y.ptr<float>(), x.ptr<float>(), mask.ptr<float>(), rows,
                                       /*seq=*/1, width, /*cond_stride=*/width);
  return y;
}

absl::StatusOr<std::unique_ptr<HstuLayer>> HstuLayer::Create(ParameterStore& store,
                                                              parallel::Communicator& tp,
                                                              parallel::Communicator& sp,
                                                              const std::string& name,
                                                              const HstuLayerDims& dims) {
  auto layer = std::unique_ptr<HstuLayer>(new HstuLayer(store, tp, sp, name, dims));
  parallel::TensorParallelLinearOptions uvqk;
  uvqk.bias = false;
  uvqk.weight_init = ParamInit::Normal(0.02f);
  // [U | V | Q | K] as four equal blocks split alike over tp; blocks of two
  // widths are one block (tp 1 only: the config rules).
  uvqk.out_blocks = dims.linear_dim == dims.attention_dim ? 4 : 1;
  TESSERA_ASSIGN_OR_RETURN(layer->uvqk_, parallel::ColumnParallelLinear::Create(
                                             store, tp, name + ".uvqk", dims.dim, dims.fused(),
                                             uvqk));
  TESSERA_ASSIGN_OR_RETURN(layer->o_, parallel::RowParallelLinear::Create(
                                          store, tp, name + ".o", dims.gated(), dims.dim, {}));
  // Shared across heads: under tp each rank's gradient is its heads' share.
  const ParallelSpec shared =
      tp.size() > 1 ? ParallelSpec::TensorPartial() : ParallelSpec::Replicated();
  layer->pos_bias_ = store.Register(name + ".pos_bias", Shape{2 * dims.max_len - 1},
                                    ParamInit::Normal(0.02f), /*weight_decay=*/false, shared);
  layer->time_bias_ = store.Register(name + ".time_bias", Shape{dims.num_time_buckets + 1},
                                     ParamInit::Normal(0.02f), /*weight_decay=*/false, shared);
  return layer;
}

HstuLayer::HstuLayer(ParameterStore& store, parallel::Communicator& tp,
                     parallel::Communicator& sp, const std::string& name,
                     const HstuLayerDims& dims)
    : store_(store),
      tp_(tp),
      sp_(sp),
      dims_(dims),
      local_(dims.Local(tp.size())),
      attend_(dims.Local(tp.size() * sp.size())),
      input_norm_(store, name + ".input_norm", dims.dim, /*affine=*/false, kNormEps) {}

absl::Status HstuLayer::SumOverTp(const Tensor& t) {
  return tp_.CompleteOnDevice(
      tp_.AllReduce(t.ptr<float>(), t.numel(), DType::kF32, parallel::ReduceOp::kSum));
}

absl::StatusOr<Tensor> HstuLayer::Forward(Arena& arena, const Tensor& x,
                                          const JaggedTokens& tokens,
                                          const Tensor& dropout_mask) {
  TESSERA_CHECK(x.rank() == 2 && x.dim(0) == tokens.mine.size() && x.dim(1) == dims_.dim);
  Backend& backend = arena.backend();
  const int64_t total = tokens.mine.size(), width = local_.fused(), gated = local_.gated();
  const int64_t hv = gated, hqk = local_.heads * local_.attention_dim;
  tokens_ = tokens;
  TESSERA_ASSIGN_OR_RETURN(projected_, uvqk_->Forward(arena, input_norm_.Forward(arena, x)));
  fused_ = arena.AllocateUninitialized(DType::kF32, Shape{total, width});  // [total, fused / tp]
  backend.SiluForward(projected_.ptr<float>(), fused_.ptr<float>(), total * width);
  float* f = fused_.ptr<float>();  // row = [U | V | Q | K] of this rank's heads
  TESSERA_RETURN_IF_ERROR(Attend(arena, f + hv, f + 2 * hv, f + 2 * hv + hqk, width));
  // The norm spans every head: under tp its row statistics are summed over
  // the tp ranks' columns (two all-reduces of one float per token).
  Tensor gate = arena.AllocateUninitialized(DType::kF32, Shape{total, gated});
  gate_mean_ = arena.AllocateUninitialized(DType::kF32, Shape{total});
  gate_rstd_ = arena.AllocateUninitialized(DType::kF32, Shape{total});
  if (tp_.size() == 1) {
    backend.HstuNormGateForward(attention_.ptr<float>(), f, width, gate.ptr<float>(),
                                gate_mean_.ptr<float>(), gate_rstd_.ptr<float>(), total, gated,
                                kNormEps);
  } else {
    const int64_t all_gated = dims_.gated();
    backend.HstuNormGateSums(attention_.ptr<float>(), total, gated, nullptr,
                             gate_mean_.ptr<float>());
    TESSERA_RETURN_IF_ERROR(SumOverTp(gate_mean_));
    backend.Scale(gate_mean_.ptr<float>(), total, 1.0f / static_cast<float>(all_gated));
    Tensor squares = arena.AllocateUninitialized(DType::kF32, Shape{total});
    backend.HstuNormGateSums(attention_.ptr<float>(), total, gated, gate_mean_.ptr<float>(),
                             squares.ptr<float>());
    TESSERA_RETURN_IF_ERROR(SumOverTp(squares));
    backend.HstuNormGateApply(attention_.ptr<float>(), f, width, gate_mean_.ptr<float>(),
                              squares.ptr<float>(), all_gated, kNormEps, gate.ptr<float>(),
                              gate_rstd_.ptr<float>(), total, gated);
  }
  // The mask is drawn over all heads (as on one process): this rank's columns.
  dropout_mask_ = dropout_mask;
  if (dropout_mask.defined() && tp_.size() > 1) {
    dropout_mask_ = arena.AllocateUninitialized(DType::kF32, Shape{total, gated});
    const size_t row_bytes = gated * sizeof(float);
    backend.Copy2D(dropout_mask_.ptr<float>(), row_bytes,
                   dropout_mask.ptr<float>() + tp_.rank() * gated, tp_.size() * row_bytes,
                   row_bytes, total);
  }
  if (dropout_mask_.defined()) gate = ApplyDropout(arena, gate, dropout_mask_);
  TESSERA_ASSIGN_OR_RETURN(Tensor y, o_->Forward(arena, gate));  // [total, H dv / tp] -> [total, D]
  backend.AddInPlace(y.ptr<float>(), x.ptr<float>(), total * dims_.dim);
  return y;
}

absl::StatusOr<Tensor> HstuLayer::Backward(Arena& arena, const Tensor& dy) {
  Backend& backend = arena.backend();
  const int64_t total = tokens_.mine.size(), width = local_.fused(), gated = local_.gated();
  const int64_t hv = gated, hqk = local_.heads * local_.attention_dim;
  TESSERA_ASSIGN_OR_RETURN(Tensor dgate, o_->Backward(arena, dy));  // [total, H dv / tp]
  if (dropout_mask_.defined()) dgate = ApplyDropout(arena, dgate, dropout_mask_);
  // Every column of dfused is written: U by the gate, V, Q, K by attention.
  Tensor dfused = arena.AllocateUninitialized(DType::kF32, Shape{total, width});
  Tensor dattention = arena.AllocateUninitialized(DType::kF32, Shape{total, gated});
  float* df = dfused.ptr<float>();
  const float* f = fused_.ptr<float>();
  if (tp_.size() == 1) {
    backend.HstuNormGateBackward(dgate.ptr<float>(), attention_.ptr<float>(), f, width,
                                 gate_mean_.ptr<float>(), gate_rstd_.ptr<float>(),
                                 dattention.ptr<float>(), df, total, gated);
  } else {
    Tensor sums = arena.AllocateUninitialized(DType::kF32, Shape{total, 2});
    backend.HstuNormGateBackwardSums(dgate.ptr<float>(), attention_.ptr<float>(), f, width,
                                     gate_mean_.ptr<float>(), gate_rstd_.ptr<float>(), total,
                                     gated, sums.ptr<float>());
    TESSERA_RETURN_IF_ERROR(SumOverTp(sums));
    backend.HstuNormGateBackwardApply(dgate.ptr<float>(), attention_.ptr<float>(), f, width,
                                      gate_mean_.ptr<float>(), gate_rstd_.ptr<float>(),
                                      sums.ptr<float>(), dims_.gated(), dattention.ptr<float>(),
                                      df, total, gated);
  }
  TESSERA_RETURN_IF_ERROR(
      AttendBackward(arena, dattention, df + hv, df + 2 * hv, df + 2 * hv + hqk, width));
  Tensor dprojected = arena.AllocateUninitialized(DType::kF32, Shape{total, width});
  backend.SiluBackward(df, projected_.ptr<float>(), dprojected.ptr<float>(), total * width);
  TESSERA_ASSIGN_OR_RETURN(const Tensor dnormed, uvqk_->Backward(arena, dprojected));
  Tensor dx = input_norm_.Backward(arena, dnormed);
  backend.AddInPlace(dx.ptr<float>(), dy.ptr<float>(), total * dims_.dim);
  projected_ = fused_ = attention_ = gate_mean_ = gate_rstd_ = dropout_mask_ = Tensor();
  heads_vqk_ = Tensor();
  exchange_.reset();
  return dx;
}

absl::Status HstuLayer::Attend(Arena& arena, float* v, float* q, float* k, int64_t stride) {
  Backend& backend = arena.backend();
  const JaggedTokens& t = tokens_;
  const int64_t rows = t.mine.size(), hv = local_.gated();
  const int64_t hqk = local_.heads * local_.attention_dim;
  attention_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, hv});
  const float* pos = store_.param(pos_bias_).ptr<float>();
  const float* time = store_.param(time_bias_).ptr<float>();
  if (sp_.size() == 1) {
    backend.HstuAttentionForward(t.offsets, t.users, local_.max_len, local_.heads,
                                 local_.attention_dim, local_.linear_dim, q, k, stride, v, stride,
                                 pos, time, local_.num_time_buckets, t.timestamps,
                                 t.query_timestamps, attention_.ptr<float>());
    return absl::OkStatus();
  }
  // Every token, this rank's heads: [V | Q | K] of them side by side.
  exchange_ = std::make_unique<parallel::JaggedUlysses>(sp_, t.total);
  const parallel::ColumnBlock vqk[] = {{v, stride, hv}, {q, stride, hqk}, {k, stride, hqk}};
  TESSERA_ASSIGN_OR_RETURN(heads_vqk_, exchange_->ToHeads(arena, vqk));
  const int64_t part = heads_vqk_.dim(1), hv_part = attend_.gated();
  const int64_t hqk_part = attend_.heads * attend_.attention_dim;
  const float* h = heads_vqk_.ptr<float>();
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{t.total, hv_part});
  backend.HstuAttentionForward(t.offsets, t.users, attend_.max_len, attend_.heads,
                               attend_.attention_dim, attend_.linear_dim, h + hv_part,
                               h + hv_part + hqk_part, part, h, part, pos, time,
                               attend_.num_time_buckets, t.timestamps, t.query_timestamps,
                               out.ptr<float>());
  const parallel::ColumnBlock a[] = {{attention_.ptr<float>(), hv, hv}};
  return exchange_->ToTokens(arena, out, a);
}

absl::Status HstuLayer::AttendBackward(Arena& arena, const Tensor& dattention, float* dv,
                                       float* dq, float* dk, int64_t stride) {
  Backend& backend = arena.backend();
  const JaggedTokens& t = tokens_;
  const int64_t hv = local_.gated(), hqk = local_.heads * local_.attention_dim;
  const float* pos = store_.param(pos_bias_).ptr<float>();
  const float* time = store_.param(time_bias_).ptr<float>();
  float* dpos = store_.grad(pos_bias_).ptr<float>();
  float* dtime = store_.grad(time_bias_).ptr<float>();
  if (sp_.size() == 1) {
    const float* f = fused_.ptr<float>();
    const float *v = f + hv, *q = f + 2 * hv, *k = f + 2 * hv + hqk;
    backend.HstuAttentionBackward(t.offsets, t.users, local_.max_len, local_.heads,
                                  local_.attention_dim, local_.linear_dim, q, k, stride, v, stride,
                                  pos, time, local_.num_time_buckets, t.timestamps,
                                  t.query_timestamps, dattention.ptr<float>(), dq, dk, dv, dpos,
                                  dtime);
    return absl::OkStatus();
  }
  const parallel::ColumnBlock da[] = {{dattention.ptr<float>(), hv, hv}};
  TESSERA_ASSIGN_OR_RETURN(const Tensor dout, exchange_->ToHeads(arena, da));
  const int64_t part = heads_vqk_.dim(1), hv_part = attend_.gated();
  const int64_t hqk_part = attend_.heads * attend_.attention_dim;
  const float* h = heads_vqk_.ptr<float>();
  Tensor dheads = arena.AllocateUninitialized(DType::kF32, heads_vqk_.shape());
  float* dh = dheads.ptr<float>();
  backend.HstuAttentionBackward(t.offsets, t.users, attend_.max_len, attend_.heads,
                                attend_.attention_dim, attend_.linear_dim, h + hv_part,
                                h + hv_part + hqk_part, part, h, part, pos, time,
                                attend_.num_time_buckets, t.timestamps, t.query_timestamps,
                                dout.ptr<float>(), dh + hv_part, dh + hv_part + hqk_part, dh,
                                dpos, dtime);
  const parallel::ColumnBlock dvqk[] = {{dv, stride, hv}, {dq, stride, hqk}, {dk, stride, hqk}};
  return exchange_->ToTokens(arena, dheads, dvqk);
}

double HstuLayer::ForwardFlops(int64_t length) const {
  const HstuLayerDims mine = dims_.Local(tp_.size());
  // This sp rank's share of the tokens through its tp heads' projections.
  const double projections =
      2.0 * length * mine.dim * (mine.fused() + mine.gated()) / sp_.size();
  // Causal pairs: length (length + 1) / 2, each q.k and a.v per head.
  const double pairs = 0.5 * length * (length + 1.0);
  return projections + 2.0 * pairs * attend_.heads * (attend_.attention_dim + attend_.linear_dim);
}

}  // namespace tessera::hstu
