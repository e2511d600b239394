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
                 store_.grad(w_up_).ptr<float>(),   store_.grad(w_down_).ptr<float>(),
                 store_.param_bf16(w_gate_),        store_.param_bf16(w_up_),
                 store_.param_bf16(w_down_)};
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
  saved_x_bf16_ = saved_act_bf16_ = Tensor();
  if (rows == 0) return;
  Backend& backend = arena.backend();
  // In a bf16 run x and act are rounded once, for these GEMMs and the
  // weight gradients' in Backward; the weights' copies come from the store.
  saved_x_bf16_ = Bf16Copy(arena, x);
  const GemmOperand xo{x.ptr<float>(), Bf16Data(saved_x_bf16_)};
  float* gate_up = saved_gate_up_.ptr<float>();
  backend.GemmOperands(false, true, rows, hidden_, dim_, 1.0f, xo, dim_, Weight(w_gate_), dim_,
                       0.0f, gate_up, 2 * hidden_);
  backend.GemmOperands(false, true, rows, hidden_, dim_, 1.0f, xo, dim_, Weight(w_up_), dim_, 0.0f,
                       gate_up + hidden_, 2 * hidden_);
  backend.SwigluForward(gate_up, saved_act_.ptr<float>(), rows, hidden_);
  saved_act_bf16_ = Bf16Copy(arena, saved_act_);
  backend.GemmOperands(false, true, rows, dim_, hidden_, 1.0f,
                       {saved_act_.ptr<float>(), Bf16Data(saved_act_bf16_)}, hidden_,
                       Weight(w_down_), hidden_, 0.0f, y.ptr<float>(), dim_);
}

GemmOperand SwigluMlp::Weight(ParameterStore::Id id) const {
  return {store_.param(id).ptr<float>(), store_.param_bf16(id)};
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
    const GemmOperand act{saved_act_.ptr<float>(), Bf16Data(saved_act_bf16_)};
    const GemmOperand x{saved_x_.ptr<float>(), Bf16Data(saved_x_bf16_)};
    // dy and dgate_up each feed two GEMMs: rounded once in a bf16 run.
    const Tensor dy_bf16 = Bf16Copy(arena, dy);
    const GemmOperand g{dy.ptr<float>(), Bf16Data(dy_bf16)};
    // dW_down[dim, hidden] += dy^T act
    backend.GemmOperands(true, false, dim_, hidden_, rows, 1.0f, g, dim_, act, hidden_, 1.0f,
                         store_.grad(w_down_).ptr<float>(), hidden_);
    Tensor dact = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
    backend.GemmOperands(false, false, rows, hidden_, dim_, 1.0f, g, dim_, Weight(w_down_),
                         hidden_, 0.0f, dact.ptr<float>(), hidden_);
    Tensor dgate_up = arena.AllocateUninitialized(DType::kF32, Shape{rows, 2 * hidden_});
    float* dgu = dgate_up.ptr<float>();
    backend.SwigluBackward(dact.ptr<float>(), saved_gate_up_.ptr<float>(), dgu, rows, hidden_);
    const Tensor dgu_bf16 = Bf16Copy(arena, dgate_up);
    const uint16_t* dgu16 = Bf16Data(dgu_bf16);
    const GemmOperand dgate{dgu, dgu16};
    const GemmOperand dup{dgu + hidden_, dgu16 == nullptr ? nullptr : dgu16 + hidden_};
    // dW_gate += dgate^T x, dW_up += dup^T x
    backend.GemmOperands(true, false, hidden_, dim_, rows, 1.0f, dgate, 2 * hidden_, x, dim_, 1.0f,
                         store_.grad(w_gate_).ptr<float>(), dim_);
    backend.GemmOperands(true, false, hidden_, dim_, rows, 1.0f, dup, 2 * hidden_, x, dim_, 1.0f,
                         store_.grad(w_up_).ptr<float>(), dim_);
    // dx = dgate W_gate + dup W_up
    backend.GemmOperands(false, false, rows, dim_, hidden_, 1.0f, dgate, 2 * hidden_,
                         Weight(w_gate_), dim_, 0.0f, dx.ptr<float>(), dim_);
    backend.GemmOperands(false, false, rows, dim_, hidden_, 1.0f, dup, 2 * hidden_, Weight(w_up_),
                         dim_, 1.0f, dx.ptr<float>(), dim_);
  }
  saved_x_ = saved_gate_up_ = saved_act_ = saved_x_bf16_ = saved_act_bf16_ = Tensor();
}

}  // namespace tessera
