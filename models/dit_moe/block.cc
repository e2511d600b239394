#include "models/dit_moe/block.h"


#include "runtime/base/status.h"

namespace tessera::dit_moe {
namespace {
Linear::Options ZeroInit() {
  return Linear::Options{.weight_init = ParamInit::Zeros()};
}

absl::StatusOr<std::unique_ptr<ModulationSublayer>> Modulation(ParameterStore& store,
                                                               const std::string& name,
                                                               int64_t hidden, int64_t blocks,
                                                               const ModelParallel* mp) {
  if (mp == nullptr) return MakeModulation(store, name, hidden, blocks);
  return MakeParallelModulation(store, *mp, name, hidden, blocks);
}

Tensor Copy(Arena& arena, const Tensor& x) {
  Tensor out = arena.AllocateUninitialized(x.dtype(), x.shape());
  arena.backend().Copy(out.address(), x.address(), x.bytes());
  return out;
}

// The six [B, D] chunks of a block's adaLN projection [B, 6D], in the
// reference's order (shift, scale, gate for attention, then for the MLP),
// and the two of the final layer's [B, 2D].
enum BlockChunk : int64_t { kShiftAttn, kScaleAttn, kGateAttn, kShiftFfn, kScaleFfn, kGateFfn };
enum FinalChunk : int64_t { kShiftFinal, kScaleFinal };
}  // namespace

absl::StatusOr<std::unique_ptr<DitBlock>> DitBlock::Create(ParameterStore& store,
                                                          const std::string& name,
                                                          int64_t hidden, int64_t heads,
                                                          const MoeLayer::Options& moe,
                                                          const ModelParallel* mp) {
  // Parameters register in this order: adaLN, (norms: none), attention, MoE.
  std::unique_ptr<ModulationSublayer> ada_ln;
  TESSERA_ASSIGN_OR_RETURN(ada_ln,
                           Modulation(store, name + ".adaLN_modulation", hidden, 6, mp));
  auto block = std::unique_ptr<DitBlock>(new DitBlock(store, name, hidden));
  block->ada_ln_ = std::move(ada_ln);
  if (mp == nullptr) {
    block->attn_ = MakeAttention(store, name + ".attn", hidden, heads);
    block->moe_ = MakeMoe(store, name + ".moe", hidden, moe);
  } else {
    TESSERA_ASSIGN_OR_RETURN(block->attn_,
                             MakeParallelAttention(store, *mp, name + ".attn", hidden, heads));
    TESSERA_ASSIGN_OR_RETURN(block->moe_,
                             MakeParallelMoe(store, *mp, name + ".moe", hidden, moe));
  }
  return block;
}

Tensor NormModulate::Forward(Arena& arena, const Tensor& x, const float* shift,
                             const float* scale, int64_t batch, int64_t seq,
                             int64_t cond_stride) {
  const int64_t rows = x.dim(0), dim = x.dim(1);
  x_ = x;
  batch_ = batch;
  seq_ = seq;
  cond_stride_ = cond_stride;
  mean_ = arena.AllocateUninitialized(DType::kF32, Shape{rows});
  rstd_ = arena.AllocateUninitialized(DType::kF32, Shape{rows});
  Tensor y = arena.AllocateUninitialized(DType::kF32, x.shape());
  arena.backend().LayerNormModulateForward(x.ptr<float>(), shift, scale, y.ptr<float>(),
                                           mean_.ptr<float>(), rstd_.ptr<float>(), batch, seq,
                                           dim, cond_stride, kEps);
  return y;
}

Tensor NormModulate::Backward(Arena& arena, const Tensor& dy, const float* scale, float* dshift,
                              float* dscale) {
  Tensor dx = arena.AllocateUninitialized(DType::kF32, dy.shape());
  arena.backend().LayerNormModulateBackward(dy.ptr<float>(), x_.ptr<float>(), mean_.ptr<float>(),
                                            rstd_.ptr<float>(), scale, dx.ptr<float>(), dshift,
                                            dscale, batch_, seq_, dy.dim(1), cond_stride_);
  x_ = mean_ = rstd_ = Tensor();
  return dx;
}

DitBlock::DitBlock(ParameterStore& /*store*/, const std::string& /*name*/, int64_t hidden)
    : hidden_(hidden) {}

absl::StatusOr<Tensor> DitBlock::Forward(Arena& arena, const Tensor& x, const Tensor& cond_silu,
                                         int64_t batch, int64_t seq) {
  batch_ = batch;
  seq_ = seq;
  const int64_t D = hidden_, stride = 6 * hidden_;
  Backend& backend = arena.backend();
  TESSERA_ASSIGN_OR_RETURN(saved_mod_, ada_ln_->Forward(arena, cond_silu));  // [B, 6D]
  const float* mod = saved_mod_.ptr<float>();

  const Tensor m1 =
      norm1_.Forward(arena, x, mod + kShiftAttn * D, mod + kScaleAttn * D, batch, seq, stride);
  TESSERA_ASSIGN_OR_RETURN(saved_attn_, attn_->Forward(arena, m1, batch, seq));
  Tensor x1 = Copy(arena, x);
  backend.GatedResidualForward(x1.ptr<float>(), saved_attn_.ptr<float>(), mod + kGateAttn * D, batch, seq,
                            D, stride);

  const Tensor m2 =
      norm2_.Forward(arena, x1, mod + kShiftFfn * D, mod + kScaleFfn * D, batch, seq, stride);
  TESSERA_ASSIGN_OR_RETURN(saved_moe_, moe_->Forward(arena, m2, batch, seq));
  // A new tensor: norm2 saved x1 for its backward pass.
  Tensor x2 = Copy(arena, x1);
  backend.GatedResidualForward(x2.ptr<float>(), saved_moe_.ptr<float>(), mod + kGateFfn * D, batch, seq, D,
                            stride);
  return x2;
}

absl::StatusOr<Tensor> DitBlock::Backward(Arena& arena, const Tensor& dy,
                                          const Tensor& dcond_silu, float loss_scale) {
  const int64_t D = hidden_, stride = 6 * hidden_, B = batch_, S = seq_;
  Backend& backend = arena.backend();
  const float* mod = saved_mod_.ptr<float>();
  Tensor dmod = arena.Allocate(DType::kF32, Shape{B, 6 * D});
  float* dm = dmod.ptr<float>();

  // x2 = x1 + gate2 * moe
  Tensor dmoe = arena.AllocateUninitialized(DType::kF32, dy.shape());
  backend.GatedResidualBackward(dy.ptr<float>(), saved_moe_.ptr<float>(), mod + kGateFfn * D,
                             dmoe.ptr<float>(), dm + kGateFfn * D, B, S, D, stride);
  TESSERA_ASSIGN_OR_RETURN(Tensor dm2, moe_->Backward(arena, dmoe, loss_scale));
  Tensor dx1 = norm2_.Backward(arena, dm2, mod + kScaleFfn * D, dm + kShiftFfn * D,
                               dm + kScaleFfn * D);
  backend.AddInPlace(dx1.ptr<float>(), dy.ptr<float>(), dy.numel());

  // x1 = x + gate1 * attn
  Tensor dattn = arena.AllocateUninitialized(DType::kF32, dy.shape());
  backend.GatedResidualBackward(dx1.ptr<float>(), saved_attn_.ptr<float>(), mod + kGateAttn * D,
                             dattn.ptr<float>(), dm + kGateAttn * D, B, S, D, stride);
  TESSERA_ASSIGN_OR_RETURN(Tensor dm1, attn_->Backward(arena, dattn));
  Tensor dx = norm1_.Backward(arena, dm1, mod + kScaleAttn * D, dm + kShiftAttn * D,
                              dm + kScaleAttn * D);
  backend.AddInPlace(dx.ptr<float>(), dx1.ptr<float>(), dx1.numel());

  TESSERA_ASSIGN_OR_RETURN(Tensor dcond, ada_ln_->Backward(arena, dmod));
  backend.AddInPlace(dcond_silu.ptr<float>(), dcond.ptr<float>(), dcond.numel());
  saved_mod_ = saved_attn_ = saved_moe_ = Tensor();
  return dx;
}

double DitBlock::ForwardFlops(int64_t batch, int64_t seq) const {
  return ada_ln_->ForwardFlops(batch) + attn_->ForwardFlops(batch, seq) +
         moe_->ForwardFlops(batch * seq);
}

absl::StatusOr<std::unique_ptr<FinalLayer>> FinalLayer::Create(ParameterStore& store,
                                                              const std::string& name,
                                                              int64_t hidden, int64_t out_dim,
                                                              const ModelParallel* mp) {
  std::unique_ptr<ModulationSublayer> ada_ln;
  TESSERA_ASSIGN_OR_RETURN(ada_ln,
                           Modulation(store, name + ".adaLN_modulation", hidden, 2, mp));
  Linear::Options linear = ZeroInit();
  if (mp && mp->sequence_parallel && mp->tp_size() > 1) linear.spec = ParallelSpec::TensorPartial();
  auto layer = std::unique_ptr<FinalLayer>(new FinalLayer(store, name, hidden, out_dim, linear));
  layer->ada_ln_ = std::move(ada_ln);
  return layer;
}

FinalLayer::FinalLayer(ParameterStore& store, const std::string& name, int64_t hidden,
                       int64_t out_dim, const Linear::Options& linear_options)
    : hidden_(hidden), linear_(store, name + ".linear", hidden, out_dim, linear_options) {}

absl::StatusOr<Tensor> FinalLayer::Forward(Arena& arena, const Tensor& x,
                                           const Tensor& cond_silu, int64_t batch, int64_t seq) {
  TESSERA_ASSIGN_OR_RETURN(saved_mod_, ada_ln_->Forward(arena, cond_silu));  // [B, 2D]
  const float* mod = saved_mod_.ptr<float>();
  const Tensor m = norm_.Forward(arena, x, mod + kShiftFinal * hidden_,
                                 mod + kScaleFinal * hidden_, batch, seq, 2 * hidden_);
  return linear_.Forward(arena, m);
}

absl::StatusOr<Tensor> FinalLayer::Backward(Arena& arena, const Tensor& dy,
                                            const Tensor& dcond_silu) {
  Tensor dm = linear_.Backward(arena, dy);
  Tensor dmod = arena.Allocate(DType::kF32, Shape{saved_mod_.dim(0), 2 * hidden_});
  float* dmo = dmod.ptr<float>();
  Tensor dx = norm_.Backward(arena, dm, saved_mod_.ptr<float>() + kScaleFinal * hidden_,
                             dmo + kShiftFinal * hidden_, dmo + kScaleFinal * hidden_);
  TESSERA_ASSIGN_OR_RETURN(Tensor dcond, ada_ln_->Backward(arena, dmod));
  arena.backend().AddInPlace(dcond_silu.ptr<float>(), dcond.ptr<float>(), dcond.numel());
  saved_mod_ = Tensor();
  return dx;
}

}  // namespace tessera::dit_moe
