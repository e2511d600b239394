#include "models/mamba_hybrid/mlp.h"

#include <cmath>

#include "runtime/base/status.h"
#include "runtime/nn/linear.h"

namespace tessera::mamba_hybrid {

int64_t FfnHidden(const MambaHybridConfig& config) {
  return config.ffn_hidden_size() > 0 ? config.ffn_hidden_size() : 4 * config.hidden_size();
}

HybridMlp::HybridMlp(ParameterStore& store, const std::string& name,
                     const MambaHybridConfig& config, const HybridLayout& layout)
    : store_(store),
      layout_(layout),
      swiglu_(config.mlp_activation() == MambaHybridConfig::SWIGLU),
      hidden_(config.hidden_size()),
      ffn_(FfnHidden(config) / layout.tp_size()) {
  const int64_t F = FfnHidden(config), D = hidden_;
  const ParamInit fc1_init = ParamInit::Uniform(static_cast<float>(1 / std::sqrt(double(D))));
  // SwiGLU: [gate; up] stacked as [2, F, D], each block split over tp.
  fc1_ = swiglu_ ? RegisterTpSplit(store, layout, name + ".fc1.weight", Shape{2, F, D}, 1,
                                   fc1_init, true)
                 : RegisterTpSplit(store, layout, name + ".fc1.weight", Shape{F, D}, 0, fc1_init,
                                   true);
  fc2_ = RegisterTpSplit(
      store, layout, name + ".fc2.weight", Shape{D, F}, 1,
      ParamInit::Uniform(static_cast<float>(1 / std::sqrt(double(F) * config.num_layers()))),
      true);
}

absl::StatusOr<Tensor> HybridMlp::Forward(Arena& arena, const Tensor& x, int64_t batch,
                                          int64_t /*seq*/) {
  Backend& backend = arena.backend();
  batch_ = batch;
  TESSERA_ASSIGN_OR_RETURN(u_, EnterTpRegion(arena, layout_, x, batch));
  const int64_t rows = u_.dim(0);
  pre_ = ProjectForward(arena, store_, {{fc1_, (swiglu_ ? 2 : 1) * ffn_}}, u_);
  act_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, ffn_});
  if (swiglu_) {
    backend.SwigluForward(pre_.ptr<float>(), act_.ptr<float>(), rows, ffn_);
  } else {
    backend.ReluSquaredForward(pre_.ptr<float>(), act_.ptr<float>(), act_.numel());
  }
  Tensor partial = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
  LinearForward(backend, act_, store_.param(fc2_).ptr<float>(), nullptr, partial);
  return ExitTpRegion(arena, layout_, partial, batch_);  // fc2 is row-parallel
}

absl::StatusOr<Tensor> HybridMlp::Backward(Arena& arena, const Tensor& dy_local) {
  Backend& backend = arena.backend();
  TESSERA_ASSIGN_OR_RETURN(const Tensor dy, ExitTpRegionBackward(arena, layout_, dy_local, batch_));
  Tensor dact = arena.AllocateUninitialized(DType::kF32, act_.shape());
  LinearBackward(backend, dy, act_, store_.param(fc2_).ptr<float>(),
                 store_.grad(fc2_).ptr<float>(), nullptr, dact);
  Tensor dpre = arena.AllocateUninitialized(DType::kF32, pre_.shape());
  if (swiglu_) {
    backend.SwigluBackward(dact.ptr<float>(), pre_.ptr<float>(), dpre.ptr<float>(), dact.dim(0),
                           ffn_);
  } else {
    backend.ReluSquaredBackward(dact.ptr<float>(), pre_.ptr<float>(), dpre.ptr<float>(),
                                dpre.numel());
  }
  const Tensor du = ProjectBackward(arena, store_, {{fc1_, pre_.dim(1)}}, dpre, u_);
  u_ = pre_ = act_ = Tensor();
  return EnterTpRegionBackward(arena, layout_, du, batch_);
}

double HybridMlp::ForwardFlops(int64_t batch, int64_t seq) const {
  // All rows of the sp shard (under Megatron SP too), this rank's ffn columns.
  const double rows = static_cast<double>(batch) * seq;
  return 2.0 * rows * hidden_ * ffn_ * (swiglu_ ? 3 : 2);
}

double HybridMlp::SavedFloatsPerToken() const {
  return static_cast<double>(hidden_ + (swiglu_ ? 3 : 2) * ffn_);
}

}  // namespace tessera::mamba_hybrid
