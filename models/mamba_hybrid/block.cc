#include "models/mamba_hybrid/block.h"

#include "runtime/base/status.h"

namespace tessera::mamba_hybrid {

HybridBlock::HybridBlock(ParameterStore& store, const std::string& norm_name, int64_t hidden,
                         float eps, std::unique_ptr<Sublayer> sublayer, ParallelSpec norm_spec)
    : store_(store),
      hidden_(hidden),
      eps_(eps),
      norm_weight_(store.Register(norm_name, Shape{hidden}, ParamInit::Ones(),
                                  /*weight_decay=*/false, norm_spec)),
      sublayer_(std::move(sublayer)) {}

absl::StatusOr<Tensor> HybridBlock::Forward(Arena& arena, const Tensor& x, int64_t batch,
                                            int64_t seq) {
  Backend& backend = arena.backend();
  const int64_t rows = x.dim(0);
  x_ = x;
  Tensor normed = arena.AllocateUninitialized(DType::kF32, x.shape());
  rstd_ = arena.AllocateUninitialized(DType::kF32, Shape{rows});
  backend.RmsNormForward(x.ptr<float>(), store_.param(norm_weight_).ptr<float>(),
                         normed.ptr<float>(), rstd_.ptr<float>(), rows, hidden_, eps_);
  TESSERA_ASSIGN_OR_RETURN(Tensor y, sublayer_->Forward(arena, normed, batch, seq));
  backend.AddInPlace(y.ptr<float>(), x.ptr<float>(), y.numel());  // the residual
  return y;
}

absl::StatusOr<Tensor> HybridBlock::Step(Arena& arena, const Tensor& x) {
  Backend& backend = arena.backend();
  const int64_t rows = x.dim(0);
  Tensor normed = arena.AllocateUninitialized(DType::kF32, x.shape());
  Tensor rstd = arena.AllocateUninitialized(DType::kF32, Shape{rows});
  backend.RmsNormForward(x.ptr<float>(), store_.param(norm_weight_).ptr<float>(),
                         normed.ptr<float>(), rstd.ptr<float>(), rows, hidden_, eps_);
  TESSERA_ASSIGN_OR_RETURN(Tensor y, sublayer_->Step(arena, normed));
  backend.AddInPlace(y.ptr<float>(), x.ptr<float>(), y.numel());
  return y;
}

absl::StatusOr<Tensor> HybridBlock::Backward(Arena& arena, const Tensor& dy) {
  Backend& backend = arena.backend();
  TESSERA_ASSIGN_OR_RETURN(Tensor dnormed, sublayer_->Backward(arena, dy));
  Tensor dx = arena.AllocateUninitialized(DType::kF32, dy.shape());
  backend.RmsNormBackward(dnormed.ptr<float>(), x_.ptr<float>(),
                          store_.param(norm_weight_).ptr<float>(), rstd_.ptr<float>(),
                          dx.ptr<float>(), store_.grad(norm_weight_).ptr<float>(), dx.dim(0),
                          hidden_);
  backend.AddInPlace(dx.ptr<float>(), dy.ptr<float>(), dx.numel());
  x_ = rstd_ = Tensor();
  return dx;
}

}  // namespace tessera::mamba_hybrid
