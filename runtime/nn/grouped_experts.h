// The routed SwiGLU experts of an MoE layer, run together: where each
// expert would make its own GEMM chain (three GEMMs forward, six backward,
// per expert), every GEMM of the chain is one Backend::GemmGrouped call over
// all experts, and the SwiGLU activation one call over all their rows. The
// device schedules the experts' GEMMs together (one cuBLAS grouped call on a
// GPU, the CPU's threads sharing them out) instead of one after another, and
// an expert with no rows costs nothing.
//
// Each expert's arithmetic is exactly its SwigluMlp's (the same GEMM shapes,
// operands and accumulation), so the results equal the per-expert chain's
// (bit for bit at one thread; see Backend::GemmGrouped).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/nn/swiglu_mlp.h"
#include "runtime/tensor/arena.h"

namespace tessera {

class GroupedSwigluExperts {
 public:
  // The experts (not owned), all of one dim and hidden size.
  explicit GroupedSwigluExperts(std::vector<SwigluMlp*> experts);

  // x: [rows, dim] in expert order, expert e owning rows [offsets[e],
  // offsets[e + 1]) (host values, experts + 1 of them, offsets[0] == 0);
  // writes every row of y ([rows, dim]). Saves what Backward needs.
  void Forward(Arena& arena, const Tensor& x, std::span<const int64_t> offsets, const Tensor& y);
  // dy: [rows, dim] of the last Forward; dx ([rows, dim]) is overwritten and
  // the experts' weight gradients accumulate.
  void Backward(Arena& arena, const Tensor& dy, const Tensor& dx);

 private:
  std::vector<SwigluMlp*> experts_;
  int64_t dim_ = 0, hidden_ = 0;
  std::vector<int64_t> offsets_;  // of the last Forward
  Tensor saved_x_;
  Tensor saved_gate_up_;  // [rows, 2*hidden]: [gate | up]
  Tensor saved_act_;      // [rows, hidden]
  // bf16 copies of x and act in a bf16 run (undefined in fp32).
  Tensor saved_x_bf16_, saved_act_bf16_;
};

}  // namespace tessera
