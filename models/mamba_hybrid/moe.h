// The MoE FFN layer (E) of the Mamba hybrid: the runtime's mixture of
// experts (runtime/nn/moe.h: a linear router with fp32 softmax and top-k,
// routed SwiGLU experts, an optional shared SwiGLU expert, the balance loss)
// in its expert-parallel form (parallel/expert_parallel/moe.h), which on one
// process is the same layer over groups of one rank.
//
// Layout: the routed experts split over ep; every rank routes a distinct
// part of the replica's tokens: its sp shard, and under tp a tp chunk of
// that (with Megatron SP the rows it holds; without it chunk tp_rank of each
// sample, the outputs all-gathered over tp), so the router and the shared
// expert hold partial gradients over tp. The balance loss and the expert
// load cover one replica's micro-batch (the tp x sp ranks' tokens), as one
// process computes them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "models/mamba_hybrid/layout.h"
#include "models/mamba_hybrid/sublayers.h"
#include "parallel/expert_parallel/moe.h"
#include "runtime/nn/moe.h"

namespace tessera::mamba_hybrid {

class HybridMoe : public Sublayer {
 public:
  // Parameters `name.router.weight`, `name.experts.<e>.w_gate`, ... as the
  // runtime's MoeLayer names them. Fails (UsageError) on options the
  // expert-parallel layer refuses.
  static absl::StatusOr<std::unique_ptr<HybridMoe>> Create(ParameterStore& store,
                                                           const std::string& name,
                                                           int64_t hidden,
                                                           const HybridLayout& layout,
                                                           const MoeLayer::Options& options);

  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch,
                                 int64_t seq) override;
  // The balance loss's gradient enters with balance_loss_scale().
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy) override;
  double ForwardFlops(int64_t batch, int64_t seq) const override;
  double SavedFloatsPerToken() const override;
  absl::Status StartGeneration(Backend&, int64_t, int64_t) override { return absl::OkStatus(); }
  absl::StatusOr<Tensor> Step(Arena& arena, const Tensor& x) override {
    return Forward(arena, x, x.dim(0), 1);
  }

  // The factor this layer's balance loss enters the total loss with (the
  // model sets it before each backward pass).
  void set_balance_loss_scale(float scale) { balance_loss_scale_ = scale; }
  float balance_loss_scale() const { return balance_loss_scale_; }
  // Of the last Forward, over the replica's micro-batch.
  double balance_loss() const { return moe_->balance_loss(); }
  const std::vector<double>& expert_load() const { return moe_->expert_load(); }
  int64_t dropped_assignments() const { return moe_->dropped_assignments(); }
  // Assignments per expert [E] over the replica's micro-batch (before
  // capacity drops), summing to routed_tokens() * top_k.
  const std::vector<int64_t>& assignment_counts() const { return moe_->assignment_counts(); }
  int64_t routed_tokens() const { return moe_->balance_tokens(); }

 private:
  HybridMoe(const HybridLayout& layout, int64_t hidden, const MoeLayer::Options& options,
            std::unique_ptr<parallel::ExpertParallelMoe> moe);

  HybridLayout layout_;
  int64_t hidden_;
  MoeLayer::Options options_;
  // Under tp without Megatron SP the tp ranks hold the same rows: each
  // routes its chunk of every sample.
  bool split_rows_;
  std::unique_ptr<parallel::ExpertParallelMoe> moe_;
  float balance_loss_scale_ = 1;
  int64_t batch_ = 0;
};

}  // namespace tessera::mamba_hybrid
