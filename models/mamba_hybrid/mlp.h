// The MLP layer of the Mamba hybrid, without biases (Megatron's hybrids):
//   squared ReLU (the paper's):  out = fc2(relu(fc1(x))^2)
//   SwiGLU:                      out = fc2(silu(gate) * up), [gate | up] = fc1(x)
// fc1 U(+-1/sqrt(hidden)); fc2 U(+-1/sqrt(ffn)) / sqrt(num_layers).
// Tensor parallelism: fc1 column-parallel (SwiGLU: gate and up each split),
// fc2 row-parallel, over ffn_hidden_size / tp columns per rank.
#pragma once

#include <string>

#include "models/mamba_hybrid/layout.h"
#include "models/mamba_hybrid/sublayers.h"
#include "runtime/config/config.pb.h"

namespace tessera::mamba_hybrid {

// ffn_hidden_size, 0 meaning 4 * hidden_size.
int64_t FfnHidden(const MambaHybridConfig& config);

class HybridMlp : public Sublayer {
 public:
  HybridMlp(ParameterStore& store, const std::string& name, const MambaHybridConfig& config,
            const HybridLayout& layout);

  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch,
                                 int64_t seq) override;
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy) override;
  double ForwardFlops(int64_t batch, int64_t seq) const override;
  double SavedFloatsPerToken() const override;
  absl::Status StartGeneration(Backend&, int64_t, int64_t) override { return absl::OkStatus(); }
  absl::StatusOr<Tensor> Step(Arena& arena, const Tensor& x) override {
    return Forward(arena, x, x.dim(0), 1);
  }

 private:
  ParameterStore& store_;
  HybridLayout layout_;
  bool swiglu_;
  int64_t hidden_, ffn_;  // ffn_: this rank's columns
  ParameterStore::Id fc1_, fc2_;  // [ffn, D] or [2, ffn, D]; [D, ffn]: this rank's pieces
  int64_t batch_ = 0;
  Tensor u_;    // [rows, D]: fc1's input (the tp region's rows)
  Tensor pre_;  // fc1's output: [rows, ffn] or [rows, 2 * ffn]
  Tensor act_;  // fc2's input [rows, ffn]
};

}  // namespace tessera::mamba_hybrid
