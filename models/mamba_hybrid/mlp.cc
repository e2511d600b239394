#include "models/mamba_hybrid/mlp.h"

#include <cmath>

namespace tessera::mamba_hybrid {
namespace {

Linear::Options NoBias(double bound, int64_t out_blocks = 1) {
  Linear::Options options;
  options.bias = false;
  options.out_blocks = out_blocks;
  options.weight_init = ParamInit::Uniform(static_cast<float>(bound));
  return options;
}

}  // namespace

int64_t FfnHidden(const MambaHybridConfig& config) {
  return config.ffn_hidden_size() > 0 ? config.ffn_hidden_size() : 4 * config.hidden_size();
}

HybridMlp::HybridMlp(ParameterStore& store, const std::string& name,
                     const MambaHybridConfig& config)
    : swiglu_(config.mlp_activation() == MambaHybridConfig::SWIGLU),
      ffn_(FfnHidden(config)),
      fc1_(store, name + ".fc1", config.hidden_size(), (swiglu_ ? 2 : 1) * ffn_,
           NoBias(1 / std::sqrt(double(config.hidden_size())), swiglu_ ? 2 : 1)),
      fc2_(store, name + ".fc2", ffn_, config.hidden_size(),
           NoBias(1 / std::sqrt(double(ffn_) * config.num_layers()))) {}

absl::StatusOr<Tensor> HybridMlp::Forward(Arena& arena, const Tensor& x, int64_t /*batch*/,
                                          int64_t /*seq*/) {
  Backend& backend = arena.backend();
  pre_ = fc1_.Forward(arena, x);
  const int64_t rows = x.dim(0);
  Tensor act = arena.AllocateUninitialized(DType::kF32, Shape{rows, ffn_});
  if (swiglu_) {
    backend.SwigluForward(pre_.ptr<float>(), act.ptr<float>(), rows, ffn_);
  } else {
    backend.ReluSquaredForward(pre_.ptr<float>(), act.ptr<float>(), act.numel());
  }
  return fc2_.Forward(arena, act);
}

absl::StatusOr<Tensor> HybridMlp::Backward(Arena& arena, const Tensor& dy) {
  Backend& backend = arena.backend();
  const Tensor dact = fc2_.Backward(arena, dy);
  Tensor dpre = arena.AllocateUninitialized(DType::kF32, pre_.shape());
  if (swiglu_) {
    backend.SwigluBackward(dact.ptr<float>(), pre_.ptr<float>(), dpre.ptr<float>(), dact.dim(0),
                           ffn_);
  } else {
    backend.ReluSquaredBackward(dact.ptr<float>(), pre_.ptr<float>(), dpre.ptr<float>(),
                                dpre.numel());
  }
  pre_ = Tensor();
  return fc1_.Backward(arena, dpre);
}

double HybridMlp::ForwardFlops(int64_t batch, int64_t seq) const {
  return fc1_.ForwardFlops(batch * seq) + fc2_.ForwardFlops(batch * seq);
}

double HybridMlp::SavedFloatsPerToken() const {
  return static_cast<double>((swiglu_ ? 3 : 2) * ffn_);
}

}  // namespace tessera::mamba_hybrid
