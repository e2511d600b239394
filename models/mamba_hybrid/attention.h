// Causal grouped-query self-attention of the Mamba hybrid (Megatron's
// attention layer in the paper's hybrids: no bias, no position embedding):
//
//   q = q_proj(x) [rows, H, Dh];  k, v = kv_proj(x) [rows, 2, KV, Dh]
//   o = causal softmax(q k^T / sqrt(Dh)) v, query head h using key/value
//   head h / (H / KV);  out = out_proj(o)
//
// The key/value heads are repeated to H heads for the attention op (one
// FlashAttention-2 kernel for every head count) and their gradients summed
// back. Weights U(+-1/sqrt(fan_in)); out_proj also / sqrt(num_layers).
#pragma once

#include <string>

#include "models/mamba_hybrid/sublayers.h"
#include "runtime/config/config.pb.h"
#include "runtime/nn/linear.h"

namespace tessera::mamba_hybrid {

class CausalSelfAttention : public Sublayer {
 public:
  CausalSelfAttention(ParameterStore& store, const std::string& name,
                      const MambaHybridConfig& config);

  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch,
                                 int64_t seq) override;
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy) override;
  double ForwardFlops(int64_t batch, int64_t seq) const override;
  double SavedFloatsPerToken() const override;
  // The cache holds q and the repeated keys and values of every position so
  // far, [max_len, 3, H, Dh], for one sample (batch 1). Each step runs the
  // attention op over the cached prefix and keeps the last row: the
  // projections are never recomputed, but the op recomputes the prefix's
  // rows (it has no one-query form yet), so a step costs O(length^2).
  absl::Status StartGeneration(Backend& backend, int64_t batch, int64_t max_len) override;
  absl::StatusOr<Tensor> Step(Arena& arena, const Tensor& x) override;

 private:
  // Writes q [rows, H*Dh] and the repeated k, v of kv [rows, 2, KV*Dh] into
  // `qkv` rows [rows, 3, H, Dh].
  void FillQkv(Backend& backend, const Tensor& q, const Tensor& kv, float* qkv,
               int64_t rows) const;
  int64_t heads_, kv_heads_, head_dim_;
  Linear q_proj_, kv_proj_, out_proj_;
  int64_t batch_ = 0, seq_ = 0;
  Tensor qkv_;  // [rows, 3, H, Dh]: q and the repeated k, v
  Tensor out_, lse_;
  Tensor cache_;  // generation: [max_len, 3, H, Dh]
  int64_t cached_ = 0;
};

}  // namespace tessera::mamba_hybrid
