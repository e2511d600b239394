#include "runtime/nn/swiglu_mlp.h"


namespace tessera {

SwigluMlp::SwigluMlp(ParameterStore& store, const std::string& name, int64_t dim,
                     int64_t hidden, ParallelSpec spec)
    : store_(store), dim_(dim), hidden_(hidden) {
  w_gate_ = store.Register(name + ".w_gate", Shape{hidden, dim},
                           ParamInit::XavierUniform(dim, hidden), true, spec);
  w_up_ = store.Register(name + ".w_up", Shape{hidden, dim},
                         ParamInit::XavierUniform(dim, hidden), true, spec);
  w_down_ = store.Register(name + ".w_down", Shape{dim, hidden},
                           ParamInit::XavierUniform(hidden, dim), true, spec);
}

SwigluMlp::Weights SwigluMlp::weights() const {
  return Weights{store_.param(w_gate_).ptr<float>(), store_.param(w_up_).ptr<float>(),
                 store_.param(w_down_).ptr<float>(), store_.grad(w_gate_).ptr<float>(),
                 store_.grad(w_up_).ptr<float>(),   store_.grad(w_down_).ptr<float>()};
}

Tensor SwigluMlp::Forward(Arena& arena, const Tensor& x) {
  Tensor y = arena.AllocateUninitialized(DType::kF32, Shape{x.dim(0), dim_});
  ForwardInto(arena, x, y);
  return y;
}

void SwigluMlp::ForwardInto(Arena& arena, const Tensor& x, const Tensor& y) {
  const int64_t rows = x.dim(0);
  TESSERA_CHECK(x.dim(1) == dim_ && y.dim(0) == rows && y.dim(1) == dim_);
  saved_x_ = x;
  saved_gate_up_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, 2 * hidden_});
  saved_act_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
  if (rows == 0) return;
  Backend& backend = arena.backend();
  float* gate_up = saved_gate_up_.ptr<float>();
  backend.Gemm(false, true, rows, hidden_, dim_, 1.0f, x.ptr<float>(), dim_,
            store_.param(w_gate_).ptr<float>(), dim_, 0.0f, gate_up, 2 * hidden_);
  backend.Gemm(false, true, rows, hidden_, dim_, 1.0f, x.ptr<float>(), dim_,
            store_.param(w_up_).ptr<float>(), dim_, 0.0f, gate_up + hidden_, 2 * hidden_);
  backend.SwigluForward(gate_up, saved_act_.ptr<float>(), rows, hidden_);
  backend.Gemm(false, true, rows, dim_, hidden_, 1.0f, saved_act_.ptr<float>(), hidden_,
            store_.param(w_down_).ptr<float>(), hidden_, 0.0f, y.ptr<float>(), dim_);
}

Tensor SwigluMlp::Backward(Arena& arena, const Tensor& dy) {
  Tensor dx = arena.AllocateUninitialized(DType::kF32, Shape{dy.dim(0), dim_});
  BackwardInto(arena, dy, dx);
  return dx;
}

void SwigluMlp::BackwardInto(Arena& arena, const Tensor& dy, const Tensor& dx) {
  const int64_t rows = dy.dim(0);
  TESSERA_CHECK(rows == saved_x_.dim(0) && dx.dim(0) == rows);
  if (rows > 0) {
    Backend& backend = arena.backend();
    const float* act = saved_act_.ptr<float>();
    const float* x = saved_x_.ptr<float>();
    // dW_down[dim, hidden] += dy^T act
    backend.Gemm(true, false, dim_, hidden_, rows, 1.0f, dy.ptr<float>(), dim_, act, hidden_, 1.0f,
              store_.grad(w_down_).ptr<float>(), hidden_);
    Tensor dact = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
    backend.Gemm(false, false, rows, hidden_, dim_, 1.0f, dy.ptr<float>(), dim_,
              store_.param(w_down_).ptr<float>(), hidden_, 0.0f, dact.ptr<float>(), hidden_);
    Tensor dgate_up = arena.AllocateUninitialized(DType::kF32, Shape{rows, 2 * hidden_});
    float* dgu = dgate_up.ptr<float>();
    backend.SwigluBackward(dact.ptr<float>(), saved_gate_up_.ptr<float>(), dgu, rows, hidden_);
    // dW_gate += dgate^T x, dW_up += dup^T x
    backend.Gemm(true, false, hidden_, dim_, rows, 1.0f, dgu, 2 * hidden_, x, dim_, 1.0f,
              store_.grad(w_gate_).ptr<float>(), dim_);
    backend.Gemm(true, false, hidden_, dim_, rows, 1.0f, dgu + hidden_, 2 * hidden_, x, dim_, 1.0f,
              store_.grad(w_up_).ptr<float>(), dim_);
    // dx = dgate W_gate + dup W_up
    backend.Gemm(false, false, rows, dim_, hidden_, 1.0f, dgu, 2 * hidden_,
              store_.param(w_gate_).ptr<float>(), dim_, 0.0f, dx.ptr<float>(), dim_);
    backend.Gemm(false, false, rows, dim_, hidden_, 1.0f, dgu + hidden_, 2 * hidden_,
              store_.param(w_up_).ptr<float>(), dim_, 1.0f, dx.ptr<float>(), dim_);
  }
  saved_x_ = saved_gate_up_ = saved_act_ = Tensor();
}

}  // namespace tessera
