#include "runtime/nn/swiglu_mlp.h"

#include "runtime/kernels/cpu/activation.h"
#include "runtime/kernels/cpu/gemm.h"

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
  float* gate_up = saved_gate_up_.data<float>();
  cpu::Gemm(false, true, rows, hidden_, dim_, 1.0f, x.data<float>(), dim_,
            store_.param(w_gate_).data<float>(), dim_, 0.0f, gate_up, 2 * hidden_);
  cpu::Gemm(false, true, rows, hidden_, dim_, 1.0f, x.data<float>(), dim_,
            store_.param(w_up_).data<float>(), dim_, 0.0f, gate_up + hidden_, 2 * hidden_);
  cpu::SwigluForward(gate_up, saved_act_.data<float>(), rows, hidden_);
  cpu::Gemm(false, true, rows, dim_, hidden_, 1.0f, saved_act_.data<float>(), hidden_,
            store_.param(w_down_).data<float>(), hidden_, 0.0f, y.data<float>(), dim_);
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
    const float* act = saved_act_.data<float>();
    const float* x = saved_x_.data<float>();
    // dW_down[dim, hidden] += dy^T act
    cpu::Gemm(true, false, dim_, hidden_, rows, 1.0f, dy.data<float>(), dim_, act, hidden_, 1.0f,
              store_.grad(w_down_).data<float>(), hidden_);
    Tensor dact = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
    cpu::Gemm(false, false, rows, hidden_, dim_, 1.0f, dy.data<float>(), dim_,
              store_.param(w_down_).data<float>(), hidden_, 0.0f, dact.data<float>(), hidden_);
    Tensor dgate_up = arena.AllocateUninitialized(DType::kF32, Shape{rows, 2 * hidden_});
    float* dgu = dgate_up.data<float>();
    cpu::SwigluBackward(dact.data<float>(), saved_gate_up_.data<float>(), dgu, rows, hidden_);
    // dW_gate += dgate^T x, dW_up += dup^T x
    cpu::Gemm(true, false, hidden_, dim_, rows, 1.0f, dgu, 2 * hidden_, x, dim_, 1.0f,
              store_.grad(w_gate_).data<float>(), dim_);
    cpu::Gemm(true, false, hidden_, dim_, rows, 1.0f, dgu + hidden_, 2 * hidden_, x, dim_, 1.0f,
              store_.grad(w_up_).data<float>(), dim_);
    // dx = dgate W_gate + dup W_up
    cpu::Gemm(false, false, rows, dim_, hidden_, 1.0f, dgu, 2 * hidden_,
              store_.param(w_gate_).data<float>(), dim_, 0.0f, dx.data<float>(), dim_);
    cpu::Gemm(false, false, rows, dim_, hidden_, 1.0f, dgu + hidden_, 2 * hidden_,
              store_.param(w_up_).data<float>(), dim_, 1.0f, dx.data<float>(), dim_);
  }
  saved_x_ = saved_gate_up_ = saved_act_ = Tensor();
}

}  // namespace tessera
