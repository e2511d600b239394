#include "models/mamba_hybrid/moe.h"

#include "runtime/base/status.h"

namespace tessera::mamba_hybrid {
namespace {

// This rank's rows [rows, D] of the tp group's chunks -> every chunk's rows
// in sample order [tp * rows, D].
absl::StatusOr<Tensor> GatherChunks(Arena& arena, parallel::Communicator& tp, const Tensor& x,
                                    int64_t batch) {
  Tensor all = arena.AllocateUninitialized(DType::kF32, Shape{tp.size() * x.dim(0), x.dim(1)});
  TESSERA_RETURN_IF_ERROR(
      tp.CompleteOnDevice(tp.AllGather(x.ptr<float>(), all.ptr<float>(), x.numel(), DType::kF32)));
  return ReorderChunks(arena, all, tp.size(), batch, /*to_sample_major=*/true);
}

}  // namespace

absl::StatusOr<std::unique_ptr<HybridMoe>> HybridMoe::Create(ParameterStore& store,
                                                             const std::string& name,
                                                             int64_t hidden,
                                                             const HybridLayout& layout,
                                                             const MoeLayer::Options& options) {
  parallel::ExpertParallelMoe::Groups groups;
  groups.balance = layout.tp_sp;  // null on one process: the ep group of one
  if (layout.tp_size() > 1) groups.dense_spec = ParallelSpec::TensorPartial();
  TESSERA_ASSIGN_OR_RETURN(
      auto moe, parallel::ExpertParallelMoe::Create(store, *layout.ep, name, hidden, options, groups));
  return std::unique_ptr<HybridMoe>(new HybridMoe(layout, hidden, options, std::move(moe)));
}

HybridMoe::HybridMoe(const HybridLayout& layout, int64_t hidden, const MoeLayer::Options& options,
                     std::unique_ptr<parallel::ExpertParallelMoe> moe)
    : layout_(layout),
      hidden_(hidden),
      options_(options),
      split_rows_(layout.tp_size() > 1 && !layout.rows_split_over_tp()),
      moe_(std::move(moe)) {}

absl::StatusOr<Tensor> HybridMoe::Forward(Arena& arena, const Tensor& x, int64_t batch,
                                          int64_t /*seq*/) {
  if (!split_rows_) return moe_->Forward(arena, x);
  batch_ = batch;
  parallel::Communicator& tp = *layout_.tp;
  const Tensor mine = TakeChunk(arena, x, tp.rank(), tp.size(), batch);  // [batch * seq/tp, D]
  TESSERA_ASSIGN_OR_RETURN(const Tensor y, moe_->Forward(arena, mine));
  return GatherChunks(arena, tp, y, batch);
}

absl::StatusOr<Tensor> HybridMoe::Backward(Arena& arena, const Tensor& dy) {
  if (!split_rows_) return moe_->Backward(arena, dy, balance_loss_scale_);
  // Each row went through one tp rank's experts: its dx comes from there.
  parallel::Communicator& tp = *layout_.tp;
  const Tensor mine = TakeChunk(arena, dy, tp.rank(), tp.size(), batch_);
  TESSERA_ASSIGN_OR_RETURN(const Tensor dx, moe_->Backward(arena, mine, balance_loss_scale_));
  return GatherChunks(arena, tp, dx, batch_);
}

double HybridMoe::ForwardFlops(int64_t batch, int64_t seq) const {
  // Per routed row: the router, k routed SwiGLU experts and the shared one.
  const double D = static_cast<double>(hidden_);
  const double per_row = 2.0 * D * options_.num_experts +
                         options_.top_k * 6.0 * D * options_.expert_hidden +
                         6.0 * D * options_.shared_expert_hidden;
  // Under tp this rank routes 1/tp of the rows: split here, or already
  // split by Megatron SP.
  const double rows = static_cast<double>(batch) * seq / layout_.tp_size();
  return per_row * rows;
}

double HybridMoe::SavedFloatsPerToken() const {
  // Router probabilities and choices, each assignment's expert input, output
  // and SwiGLU activations, the shared expert's.
  const double k = static_cast<double>(options_.top_k);
  return 2.0 * options_.num_experts + 6 * k + 2 * k * hidden_ + 3 * k * options_.expert_hidden +
         3.0 * options_.shared_expert_hidden + hidden_;
}

}  // namespace tessera::mamba_hybrid
