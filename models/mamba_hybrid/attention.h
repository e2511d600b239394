// Causal grouped-query self-attention of the Mamba hybrid (Megatron's
// attention layer in the paper's hybrids: no bias, no position embedding;
// optionally rotary position embeddings on q and k, rope_base > 0):
//
//   q = q_proj(x) [rows, H, Dh];  k, v = kv_proj(x) [rows, 2, KV, Dh]
//   q, k = RoPE(q, k) at each row's position (rotary.h; optional)
//   o = causal softmax(q k^T / sqrt(Dh)) v, query head h using key/value
//   head h / (H / KV);  out = out_proj(o)
//
// The key/value heads are repeated to H heads for the attention op (one
// FlashAttention-2 kernel for every head count) and their gradients summed
// back. Weights U(+-1/sqrt(fan_in)); out_proj also / sqrt(num_layers).
//
// Tensor parallelism splits the heads and the key/value groups over tp
// (num_heads % tp, num_query_groups % tp: config rules): q_proj and kv_proj
// column-parallel, out_proj row-parallel. Sequence parallelism runs Ulysses
// over the sp ranks on each tp rank's heads (num_heads % (tp * sp)); RoPE
// rotates each shard's rows at their positions in the whole sequence.
#pragma once

#include <string>

#include <optional>

#include "models/mamba_hybrid/layout.h"
#include "models/mamba_hybrid/rotary.h"
#include "models/mamba_hybrid/sublayers.h"
#include "parallel/sequence_parallel/ulysses_attention.h"
#include "runtime/config/config.pb.h"

namespace tessera::mamba_hybrid {

class CausalSelfAttention : public Sublayer {
 public:
  CausalSelfAttention(ParameterStore& store, const std::string& name,
                      const MambaHybridConfig& config, const HybridLayout& layout);

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
  // `qkv` rows [rows, 3, H, Dh] (not rotated).
  void FillQkv(Backend& backend, const Tensor& q, const Tensor& kv, float* qkv,
               int64_t rows) const;
  // Attention over the rows of the tp region: Ulysses when sp > 1.
  absl::Status Attend(Arena& arena);
  absl::Status AttendBackward(Arena& arena, const Tensor& dout, float* dqkv);

  ParameterStore& store_;
  HybridLayout layout_;
  int64_t hidden_, heads_, kv_heads_, head_dim_;  // this rank's heads and groups
  ParameterStore::Id q_proj_, kv_proj_, out_proj_;  // [H*Dh, D], [2, KV*Dh, D], [D, H*Dh] pieces
  std::optional<parallel::UlyssesAttention> ulysses_;  // sp > 1
  std::optional<RotaryEmbedding> rope_;                 // rope_base > 0
  int64_t batch_ = 0, seq_ = 0;
  Tensor u_;    // [rows, D]: the projections' input
  Tensor qkv_;  // [rows, 3, H, Dh]: q and the repeated k, v
  Tensor out_, lse_;
  Tensor cache_;  // generation: [max_len, 3, H, Dh]
  int64_t cached_ = 0;
};

}  // namespace tessera::mamba_hybrid
