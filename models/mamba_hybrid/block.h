// One layer of the Mamba hybrid: x + sublayer(RMSNorm(x)) (pre-norm
// residual, as every layer of Megatron's hybrids and mamba_ssm's blocks).
#pragma once

#include <memory>
#include <string>

#include "models/mamba_hybrid/sublayers.h"
#include "runtime/nn/parameter.h"

namespace tessera::mamba_hybrid {

class HybridBlock {
 public:
  // `norm_name`: the norm weight's name, e.g. "layers.3.norm.weight";
  // `norm_spec`: TensorPartial when the rows are split over tp (Megatron SP).
  HybridBlock(ParameterStore& store, const std::string& norm_name, int64_t hidden, float eps,
              std::unique_ptr<Sublayer> sublayer,
              ParallelSpec norm_spec = ParallelSpec::Replicated());

  // x: [batch * seq, hidden] -> same.
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch, int64_t seq);
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy);
  // Generation: x [batch, hidden] of one position -> the layer's output.
  absl::Status StartGeneration(Backend& backend, int64_t batch, int64_t max_len) {
    return sublayer_->StartGeneration(backend, batch, max_len);
  }
  absl::StatusOr<Tensor> Step(Arena& arena, const Tensor& x);

  Sublayer& sublayer() { return *sublayer_; }
  double ForwardFlops(int64_t batch, int64_t seq) const {
    return sublayer_->ForwardFlops(batch, seq);
  }
  // Norm input is the block input (kept by the caller); norm output, rstd, output.
  double SavedFloatsPerToken() const {
    return sublayer_->SavedFloatsPerToken() + 2.0 * hidden_ + 1;
  }

 private:
  ParameterStore& store_;
  int64_t hidden_;
  float eps_;
  ParameterStore::Id norm_weight_;
  std::unique_ptr<Sublayer> sublayer_;
  Tensor x_, rstd_;
};

}  // namespace tessera::mamba_hybrid
