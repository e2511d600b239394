#include "runtime/nn/layer_norm.h"


namespace tessera {

LayerNorm::LayerNorm(ParameterStore& store, const std::string& name, int64_t dim, bool affine,
                     float eps)
    : store_(store), dim_(dim), eps_(eps) {
  if (affine) {
    gamma_ = store.Register(name + ".weight", Shape{dim}, ParamInit::Ones(), false);
    beta_ = store.Register(name + ".bias", Shape{dim}, ParamInit::Zeros(), false);
  }
}

Tensor LayerNorm::Forward(Arena& arena, const Tensor& x) {
  TESSERA_CHECK(x.rank() == 2 && x.dim(1) == dim_);
  const int64_t rows = x.dim(0);
  Tensor y = arena.AllocateUninitialized(DType::kF32, x.shape());
  saved_mean_ = arena.AllocateUninitialized(DType::kF32, Shape{rows});
  saved_rstd_ = arena.AllocateUninitialized(DType::kF32, Shape{rows});
  const float* gamma = gamma_ >= 0 ? store_.param(gamma_).ptr<float>() : nullptr;
  const float* beta = beta_ >= 0 ? store_.param(beta_).ptr<float>() : nullptr;
  Backend& backend = arena.backend();
  backend.LayerNormForward(x.ptr<float>(), gamma, beta, y.ptr<float>(), saved_mean_.ptr<float>(),
                        saved_rstd_.ptr<float>(), rows, dim_, eps_);
  saved_x_ = x;
  return y;
}

Tensor LayerNorm::Backward(Arena& arena, const Tensor& dy) {
  const int64_t rows = dy.dim(0);
  Tensor dx = arena.AllocateUninitialized(DType::kF32, dy.shape());
  const float* gamma = gamma_ >= 0 ? store_.param(gamma_).ptr<float>() : nullptr;
  float* dgamma = gamma_ >= 0 ? store_.grad(gamma_).ptr<float>() : nullptr;
  float* dbeta = beta_ >= 0 ? store_.grad(beta_).ptr<float>() : nullptr;
  Backend& backend = arena.backend();
  backend.LayerNormBackward(dy.ptr<float>(), saved_x_.ptr<float>(), gamma,
                         saved_mean_.ptr<float>(), saved_rstd_.ptr<float>(), dx.ptr<float>(),
                         dgamma, dbeta, rows, dim_);
  saved_x_ = saved_mean_ = saved_rstd_ = Tensor();
  return dx;
}

}  // namespace tessera
