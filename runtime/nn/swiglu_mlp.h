// SwiGLU MLP without biases: y = W_down (silu(W_gate x) * (W_up x)).
// Used for DiT-MoE's routed experts and its shared expert.
#pragma once

#include <string>

#include "runtime/nn/linear.h"
#include "runtime/nn/parameter.h"
#include "runtime/tensor/arena.h"

namespace tessera {

class SwigluMlp {
 public:
  SwigluMlp(ParameterStore& store, const std::string& name, int64_t dim, int64_t hidden,
            ParallelSpec spec = ParallelSpec::Replicated());

  // x: [rows, dim] -> [rows, dim]
  Tensor Forward(Arena& arena, const Tensor& x);
  // Same, writing into y ([rows, dim], e.g. a slice of a larger buffer).
  void ForwardInto(Arena& arena, const Tensor& x, const Tensor& y);
  Tensor Backward(Arena& arena, const Tensor& dy);
  // dx ([rows, dim]) is overwritten.
  void BackwardInto(Arena& arena, const Tensor& dy, const Tensor& dx);

  int64_t hidden() const { return hidden_; }
  int64_t dim() const { return dim_; }
  // The weights ([hidden, dim], [hidden, dim], [dim, hidden]) and their
  // gradients, for GroupedSwigluExperts, which runs several experts' GEMMs
  // in one call each.
  struct Weights {
    const float *gate, *up, *down;
    float *dgate, *dup, *ddown;
    // The bf16 copies inside a bf16 step (ParameterStore::param_bf16), or null.
    const uint16_t *gate16, *up16, *down16;
  };
  Weights weights() const;
  double ForwardFlops(int64_t rows) const { return 6.0 * rows * dim_ * hidden_; }

 private:
  // A weight and its bf16 copy (null outside a bf16 step).
  GemmOperand Weight(ParameterStore::Id id) const;

  ParameterStore& store_;
  int64_t dim_, hidden_;
  ParameterStore::Id w_gate_, w_up_, w_down_;
  Tensor saved_x_;
  Tensor saved_gate_up_;  // [rows, 2*hidden]: [gate | up]
  Tensor saved_act_;      // [rows, hidden]
  // bf16 copies of x and act in a bf16 run (undefined in fp32): each feeds
  // a forward GEMM and a weight-gradient GEMM, x two of each.
  Tensor saved_x_bf16_, saved_act_bf16_;
};

}  // namespace tessera
