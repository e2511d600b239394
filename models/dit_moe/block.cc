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

DitBlock::DitBlock(ParameterStore& store, const std::string& name, int64_t hidden)
    : hidden_(hidden),
      norm1_(store, name + ".norm1", hidden, /*affine=*/false),
      norm2_(store, name + ".norm2", hidden, /*affine=*/false) {}

absl::StatusOr<Tensor> DitBlock::Forward(Arena& arena, const Tensor& x, const Tensor& cond_silu,
                                         int64_t batch, int64_t seq) {
  batch_ = batch;
  seq_ = seq;
  const int64_t D = hidden_, stride = 6 * hidden_;
  Backend& backend = arena.backend();
  TESSERA_ASSIGN_OR_RETURN(saved_mod_, ada_ln_->Forward(arena, cond_silu));  // [B, 6D]
  const float* mod = saved_mod_.ptr<float>();

  saved_h1_ = norm1_.Forward(arena, x);
  Tensor m1 = arena.AllocateUninitialized(DType::kF32, x.shape());
  backend.ModulateForward(saved_h1_.ptr<float>(), mod + kShiftAttn * D, mod + kScaleAttn * D, m1.ptr<float>(), batch,
                       seq, D, stride);
  TESSERA_ASSIGN_OR_RETURN(saved_attn_, attn_->Forward(arena, m1, batch, seq));
  Tensor x1 = Copy(arena, x);
  backend.GatedResidualForward(x1.ptr<float>(), saved_attn_.ptr<float>(), mod + kGateAttn * D, batch, seq,
                            D, stride);

  saved_h2_ = norm2_.Forward(arena, x1);
  Tensor m2 = arena.AllocateUninitialized(DType::kF32, x.shape());
  backend.ModulateForward(saved_h2_.ptr<float>(), mod + kShiftFfn * D, mod + kScaleFfn * D, m2.ptr<float>(), batch,
                       seq, D, stride);
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
  Tensor dh2 = arena.AllocateUninitialized(DType::kF32, dy.shape());
  backend.ModulateBackward(dm2.ptr<float>(), saved_h2_.ptr<float>(), mod + kScaleFfn * D,
                        dh2.ptr<float>(), dm + kShiftFfn * D, dm + kScaleFfn * D, B, S, D, stride);
  Tensor dx1 = norm2_.Backward(arena, dh2);
  backend.AddInPlace(dx1.ptr<float>(), dy.ptr<float>(), dy.numel());

  // x1 = x + gate1 * attn
  Tensor dattn = arena.AllocateUninitialized(DType::kF32, dy.shape());
  backend.GatedResidualBackward(dx1.ptr<float>(), saved_attn_.ptr<float>(), mod + kGateAttn * D,
                             dattn.ptr<float>(), dm + kGateAttn * D, B, S, D, stride);
  TESSERA_ASSIGN_OR_RETURN(Tensor dm1, attn_->Backward(arena, dattn));
  Tensor dh1 = arena.AllocateUninitialized(DType::kF32, dy.shape());
  backend.ModulateBackward(dm1.ptr<float>(), saved_h1_.ptr<float>(), mod + kScaleAttn * D,
                        dh1.ptr<float>(), dm + kShiftAttn * D, dm + kScaleAttn * D, B, S, D, stride);
  Tensor dx = norm1_.Backward(arena, dh1);
  backend.AddInPlace(dx.ptr<float>(), dx1.ptr<float>(), dx1.numel());

  TESSERA_ASSIGN_OR_RETURN(Tensor dcond, ada_ln_->Backward(arena, dmod));
  backend.AddInPlace(dcond_silu.ptr<float>(), dcond.ptr<float>(), dcond.numel());
  saved_mod_ = saved_h1_ = saved_attn_ = saved_h2_ = saved_moe_ = Tensor();
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
    : hidden_(hidden),
      norm_(store, name + ".norm_final", hidden, /*affine=*/false),
      linear_(store, name + ".linear", hidden, out_dim, linear_options) {}

absl::StatusOr<Tensor> FinalLayer::Forward(Arena& arena, const Tensor& x,
                                           const Tensor& cond_silu, int64_t batch, int64_t seq) {
  batch_ = batch;
  seq_ = seq;
  TESSERA_ASSIGN_OR_RETURN(saved_mod_, ada_ln_->Forward(arena, cond_silu));  // [B, 2D]
  saved_h_ = norm_.Forward(arena, x);
  Tensor m = arena.AllocateUninitialized(DType::kF32, x.shape());
  Backend& backend = arena.backend();
  const float* mod = saved_mod_.ptr<float>();
  backend.ModulateForward(saved_h_.ptr<float>(), mod + kShiftFinal * hidden_, mod + kScaleFinal * hidden_, m.ptr<float>(), batch, seq,
                       hidden_, 2 * hidden_);
  return linear_.Forward(arena, m);
}

absl::StatusOr<Tensor> FinalLayer::Backward(Arena& arena, const Tensor& dy,
                                            const Tensor& dcond_silu) {
  Tensor dm = linear_.Backward(arena, dy);
  Tensor dmod = arena.Allocate(DType::kF32, Shape{batch_, 2 * hidden_});
  Tensor dh = arena.AllocateUninitialized(DType::kF32, dm.shape());
  Backend& backend = arena.backend();
  float* dmo = dmod.ptr<float>();
  backend.ModulateBackward(dm.ptr<float>(), saved_h_.ptr<float>(),
                        saved_mod_.ptr<float>() + hidden_, dh.ptr<float>(), dmo + kShiftFinal * hidden_, dmo + kScaleFinal * hidden_,
                        batch_, seq_, hidden_, 2 * hidden_);
  Tensor dx = norm_.Backward(arena, dh);
  TESSERA_ASSIGN_OR_RETURN(Tensor dcond, ada_ln_->Backward(arena, dmod));
  backend.AddInPlace(dcond_silu.ptr<float>(), dcond.ptr<float>(), dcond.numel());
  saved_mod_ = saved_h_ = Tensor();
  return dx;
}

}  // namespace tessera::dit_moe
