#include "models/dit_moe/block.h"

#include <cstring>

#include "runtime/base/status.h"
#include "runtime/kernels/cpu/activation.h"
#include "runtime/kernels/cpu/modulate.h"

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
  std::memcpy(out.raw(), x.raw(), x.bytes());
  return out;
}
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
  TESSERA_ASSIGN_OR_RETURN(saved_mod_, ada_ln_->Forward(arena, cond_silu));  // [B, 6D]
  const float* mod = saved_mod_.data<float>();

  saved_h1_ = norm1_.Forward(arena, x);
  Tensor m1 = arena.AllocateUninitialized(DType::kF32, x.shape());
  cpu::ModulateForward(saved_h1_.data<float>(), mod + 0 * D, mod + 1 * D, m1.data<float>(), batch,
                       seq, D, stride);
  TESSERA_ASSIGN_OR_RETURN(saved_attn_, attn_->Forward(arena, m1, batch, seq));
  Tensor x1 = Copy(arena, x);
  cpu::GatedResidualForward(x1.data<float>(), saved_attn_.data<float>(), mod + 2 * D, batch, seq,
                            D, stride);

  saved_h2_ = norm2_.Forward(arena, x1);
  Tensor m2 = arena.AllocateUninitialized(DType::kF32, x.shape());
  cpu::ModulateForward(saved_h2_.data<float>(), mod + 3 * D, mod + 4 * D, m2.data<float>(), batch,
                       seq, D, stride);
  TESSERA_ASSIGN_OR_RETURN(saved_moe_, moe_->Forward(arena, m2, batch, seq));
  // A new tensor: norm2 saved x1 for its backward pass.
  Tensor x2 = Copy(arena, x1);
  cpu::GatedResidualForward(x2.data<float>(), saved_moe_.data<float>(), mod + 5 * D, batch, seq, D,
                            stride);
  return x2;
}

absl::StatusOr<Tensor> DitBlock::Backward(Arena& arena, const Tensor& dy,
                                          const Tensor& dcond_silu, float loss_scale) {
  const int64_t D = hidden_, stride = 6 * hidden_, B = batch_, S = seq_;
  const float* mod = saved_mod_.data<float>();
  Tensor dmod = arena.Allocate(DType::kF32, Shape{B, 6 * D});
  float* dm = dmod.data<float>();

  // x2 = x1 + gate2 * moe
  Tensor dmoe = arena.AllocateUninitialized(DType::kF32, dy.shape());
  cpu::GatedResidualBackward(dy.data<float>(), saved_moe_.data<float>(), mod + 5 * D,
                             dmoe.data<float>(), dm + 5 * D, B, S, D, stride);
  TESSERA_ASSIGN_OR_RETURN(Tensor dm2, moe_->Backward(arena, dmoe, loss_scale));
  Tensor dh2 = arena.AllocateUninitialized(DType::kF32, dy.shape());
  cpu::ModulateBackward(dm2.data<float>(), saved_h2_.data<float>(), mod + 4 * D,
                        dh2.data<float>(), dm + 3 * D, dm + 4 * D, B, S, D, stride);
  Tensor dx1 = norm2_.Backward(arena, dh2);
  cpu::AddInPlace(dx1.data<float>(), dy.data<float>(), dy.numel());

  // x1 = x + gate1 * attn
  Tensor dattn = arena.AllocateUninitialized(DType::kF32, dy.shape());
  cpu::GatedResidualBackward(dx1.data<float>(), saved_attn_.data<float>(), mod + 2 * D,
                             dattn.data<float>(), dm + 2 * D, B, S, D, stride);
  TESSERA_ASSIGN_OR_RETURN(Tensor dm1, attn_->Backward(arena, dattn));
  Tensor dh1 = arena.AllocateUninitialized(DType::kF32, dy.shape());
  cpu::ModulateBackward(dm1.data<float>(), saved_h1_.data<float>(), mod + 1 * D,
                        dh1.data<float>(), dm + 0 * D, dm + 1 * D, B, S, D, stride);
  Tensor dx = norm1_.Backward(arena, dh1);
  cpu::AddInPlace(dx.data<float>(), dx1.data<float>(), dx1.numel());

  TESSERA_ASSIGN_OR_RETURN(Tensor dcond, ada_ln_->Backward(arena, dmod));
  cpu::AddInPlace(dcond_silu.data<float>(), dcond.data<float>(), dcond.numel());
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
  const float* mod = saved_mod_.data<float>();
  cpu::ModulateForward(saved_h_.data<float>(), mod, mod + hidden_, m.data<float>(), batch, seq,
                       hidden_, 2 * hidden_);
  return linear_.Forward(arena, m);
}

absl::StatusOr<Tensor> FinalLayer::Backward(Arena& arena, const Tensor& dy,
                                            const Tensor& dcond_silu) {
  Tensor dm = linear_.Backward(arena, dy);
  Tensor dmod = arena.Allocate(DType::kF32, Shape{batch_, 2 * hidden_});
  Tensor dh = arena.AllocateUninitialized(DType::kF32, dm.shape());
  float* dmo = dmod.data<float>();
  cpu::ModulateBackward(dm.data<float>(), saved_h_.data<float>(),
                        saved_mod_.data<float>() + hidden_, dh.data<float>(), dmo, dmo + hidden_,
                        batch_, seq_, hidden_, 2 * hidden_);
  Tensor dx = norm_.Backward(arena, dh);
  TESSERA_ASSIGN_OR_RETURN(Tensor dcond, ada_ln_->Backward(arena, dmod));
  cpu::AddInPlace(dcond_silu.data<float>(), dcond.data<float>(), dcond.numel());
  saved_mod_ = saved_h_ = Tensor();
  return dx;
}

}  // namespace tessera::dit_moe
