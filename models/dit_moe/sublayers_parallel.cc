// Model parallelism: the sub-layers built from parallel/ (see sublayers.h).
#include <optional>

#include "absl/strings/str_cat.h"
#include "models/dit_moe/sublayers.h"
#include "parallel/expert_parallel/moe.h"
#include "parallel/sequence_parallel/ulysses_attention.h"
#include "parallel/tensor_parallel/linear.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::dit_moe {
namespace {

using parallel::ColumnParallelLinear;
using parallel::Communicator;
using parallel::ReduceOp;
using parallel::RowParallelLinear;

// Rows [chunks * rows, F] gathered over `group` from every rank's [rows, F].
absl::StatusOr<Tensor> GatherRows(Arena& arena, Communicator& group, const Tensor& x) {
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{group.size() * x.dim(0), x.dim(1)});
  TESSERA_RETURN_IF_ERROR(group.CompleteOnDevice(
      group.AllGather(x.ptr<float>(), out.ptr<float>(), x.numel(), DType::kF32)));
  return out;
}

Tensor Reordered(Arena& arena, const Tensor& x, bool to_sample_major, int64_t chunks,
                 int64_t batch, int64_t seq) {
  Tensor out = arena.AllocateUninitialized(DType::kF32, x.shape());
  ReorderChunks(arena.backend(), x.ptr<float>(), out.ptr<float>(), chunks, batch, seq, x.dim(1),
                to_sample_major);
  return out;
}

class ParallelModulation : public ModulationSublayer {
 public:
  ParallelModulation(std::unique_ptr<ColumnParallelLinear> linear, Communicator& tp,
                     bool sum_over_tp)
      : linear_(std::move(linear)), tp_(tp), sum_over_tp_(sum_over_tp) {}

  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& cond_silu) override {
    return linear_->Forward(arena, cond_silu);
  }
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dmod) override {
    // Each rank's columns of the weight need dmod over all of the replica's
    // tokens: under Megatron SP the tp ranks hold different ones.
    if (sum_over_tp_) {
      TESSERA_RETURN_IF_ERROR(tp_.CompleteOnDevice(
          tp_.AllReduce(dmod.ptr<float>(), dmod.numel(), DType::kF32, ReduceOp::kSum)));
    }
    return linear_->Backward(arena, dmod);
  }
  double ForwardFlops(int64_t batch) const override {
    return 2.0 * batch * linear_->in_features() * linear_->local_out_features();
  }

 private:
  std::unique_ptr<ColumnParallelLinear> linear_;
  Communicator& tp_;
  bool sum_over_tp_;
};

class ParallelAttention : public AttentionSublayer {
 public:
  ParallelAttention(const ModelParallel& mp, int64_t hidden, int64_t heads,
                    std::unique_ptr<ColumnParallelLinear> qkv,
                    std::unique_ptr<RowParallelLinear> proj,
                    std::optional<parallel::UlyssesAttention> core)
      : tp_(mp.tp_size()),
        sp_(mp.sp_size()),
        reorder_(mp.sequence_parallel && mp.tp_size() > 1),
        hidden_(hidden),
        local_heads_(heads / mp.tp_size()),
        head_dim_(hidden / heads),
        qkv_(std::move(qkv)),
        proj_(std::move(proj)),
        core_(std::move(core)) {}

  // x: [B * T_local, D] -> [B * T_local, D].
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch,
                                 int64_t seq) override {
    batch_ = batch;
    chunk_ = seq;
    seq_ = reorder_ ? seq * tp_ : seq;  // this sp rank's tokens per sample
    const int64_t width = local_heads_ * head_dim_;  // D / tp
    // [rows, 3, H/tp, Dh]; under Megatron SP the rows of all tp ranks,
    // gathered rank-major, are put back in sample order for the kernel.
    TESSERA_ASSIGN_OR_RETURN(Tensor qkv, qkv_->Forward(arena, x));
    saved_qkv_ = reorder_ ? Reordered(arena, qkv, true, tp_, batch_, chunk_) : qkv;
    const float* q = saved_qkv_.ptr<float>();
    if (core_) {
      TESSERA_ASSIGN_OR_RETURN(
          saved_out_, core_->Forward(arena, batch_, seq_ * sp_, 3 * width, q, q + width,
                                     q + 2 * width));  // [B * T_sp, D/tp]
    } else {
      saved_out_ = arena.AllocateUninitialized(DType::kF32, Shape{batch_ * seq_, width});
      saved_lse_ = arena.AllocateUninitialized(DType::kF32, Shape{batch_, local_heads_, seq_});
      arena.backend().AttentionForward(Shape4(), q, q + width, q + 2 * width, saved_out_.ptr<float>(),
                            saved_lse_.ptr<float>());
    }
    const Tensor out = reorder_ ? Reordered(arena, saved_out_, false, tp_, batch_, chunk_)
                                : saved_out_;
    return proj_->Forward(arena, out);
  }

  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy) override {
    const int64_t width = local_heads_ * head_dim_;
    TESSERA_ASSIGN_OR_RETURN(Tensor dout, proj_->Backward(arena, dy));
    if (reorder_) dout = Reordered(arena, dout, true, tp_, batch_, chunk_);
    Tensor dqkv = arena.AllocateUninitialized(DType::kF32, saved_qkv_.shape());
    float* d = dqkv.ptr<float>();
    if (core_) {
      TESSERA_RETURN_IF_ERROR(core_->Backward(arena, dout, d, d + width, d + 2 * width));
    } else {
      const float* q = saved_qkv_.ptr<float>();
      arena.backend().AttentionBackward(Shape4(), q, q + width, q + 2 * width, saved_out_.ptr<float>(),
                             dout.ptr<float>(), saved_lse_.ptr<float>(), d, d + width,
                             d + 2 * width);
    }
    if (reorder_) dqkv = Reordered(arena, dqkv, false, tp_, batch_, chunk_);
    saved_qkv_ = saved_out_ = saved_lse_ = Tensor();
    return qkv_->Backward(arena, dqkv);
  }

  double ForwardFlops(int64_t batch, int64_t seq) const override {
    // Per rank: the projections over the (gathered) rows of its heads, and
    // attention over whole sequences for H / (tp * sp) heads.
    const double rows = static_cast<double>(batch) * (reorder_ ? seq * tp_ : seq);
    const double width = static_cast<double>(local_heads_ * head_dim_);
    const double full_seq = (reorder_ ? seq * tp_ : seq) * static_cast<double>(sp_);
    return 2.0 * rows * hidden_ * 4 * width +
           4.0 * batch * full_seq * full_seq * width / static_cast<double>(sp_);
  }

 private:
  AttentionShape Shape4() const {
    return AttentionShape{batch_, seq_, local_heads_, head_dim_, 3 * local_heads_ * head_dim_,
                               false};
  }

  int tp_, sp_;
  bool reorder_;
  int64_t hidden_, local_heads_, head_dim_;
  std::unique_ptr<ColumnParallelLinear> qkv_;
  std::unique_ptr<RowParallelLinear> proj_;
  std::optional<parallel::UlyssesAttention> core_;  // sp > 1
  int64_t batch_ = 0, seq_ = 0, chunk_ = 0;
  Tensor saved_qkv_, saved_out_, saved_lse_;  // sample order
};

class ParallelMoe : public FfnSublayer {
 public:
  ParallelMoe(const ModelParallel& mp, std::unique_ptr<parallel::ExpertParallelMoe> moe)
      : tp_(*mp.tp),
        sp_size_(mp.sp_size()),
        split_rows_(!mp.sequence_parallel && mp.tp_size() > 1),
        moe_(std::move(moe)) {}

  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch,
                                 int64_t seq) override {
    if (!split_rows_) return moe_->Forward(arena, x);
    // This tp rank's chunk of every sample, then everyone's outputs back.
    batch_ = batch;
    chunk_ = seq / tp_.size();
    Tensor mine = arena.AllocateUninitialized(DType::kF32, Shape{batch * chunk_, x.dim(1)});
    TakeChunk(arena.backend(), x.ptr<float>(), mine.ptr<float>(), tp_.rank(), tp_.size(), batch,
              chunk_, x.dim(1));
    TESSERA_ASSIGN_OR_RETURN(Tensor y, moe_->Forward(arena, mine));
    TESSERA_ASSIGN_OR_RETURN(Tensor all, GatherRows(arena, tp_, y));
    return Reordered(arena, all, true, tp_.size(), batch_, chunk_);
  }

  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy, float loss_scale) override {
    // The balance loss's gradient is spread over the tp x sp ranks, and the
    // gradient reduction divides by dp * sp: scale by sp so it counts once
    // per replica, as on one process.
    const float scale = loss_scale * static_cast<float>(sp_size_);
    if (!split_rows_) return moe_->Backward(arena, dy, scale);
    Tensor mine = arena.AllocateUninitialized(DType::kF32, Shape{batch_ * chunk_, dy.dim(1)});
    TakeChunk(arena.backend(), dy.ptr<float>(), mine.ptr<float>(), tp_.rank(), tp_.size(), batch_,
              chunk_, dy.dim(1));
    TESSERA_ASSIGN_OR_RETURN(Tensor dx, moe_->Backward(arena, mine, scale));
    TESSERA_ASSIGN_OR_RETURN(Tensor all, GatherRows(arena, tp_, dx));
    return Reordered(arena, all, true, tp_.size(), batch_, chunk_);
  }

  double balance_loss() const override { return moe_->balance_loss(); }
  const std::vector<double>& expert_load() const override { return moe_->expert_load(); }
  int64_t dropped_assignments() const override { return moe_->dropped_assignments(); }
  double ForwardFlops(int64_t rows) const override {
    // Routed on this rank's share of the rows.
    return flops_per_row_ * static_cast<double>(split_rows_ ? rows / tp_.size() : rows);
  }
  void set_flops_per_row(double flops) { flops_per_row_ = flops; }

 private:
  Communicator& tp_;
  int sp_size_;
  bool split_rows_;
  std::unique_ptr<parallel::ExpertParallelMoe> moe_;
  int64_t batch_ = 0, chunk_ = 0;
  double flops_per_row_ = 0;
};

ParamInit Zeros() { return ParamInit::Zeros(); }

}  // namespace

absl::StatusOr<std::unique_ptr<ModulationSublayer>> MakeParallelModulation(
    ParameterStore& store, const ModelParallel& mp, const std::string& name, int64_t hidden,
    int64_t blocks) {
  ColumnParallelLinear::Options options;
  options.weight_init = Zeros();  // adaLN-Zero
  options.gather_output = true;
  TESSERA_ASSIGN_OR_RETURN(auto linear, ColumnParallelLinear::Create(store, *mp.tp, name, hidden,
                                                                     blocks * hidden, options));
  return std::make_unique<ParallelModulation>(std::move(linear), *mp.tp,
                                              mp.sequence_parallel && mp.tp_size() > 1);
}

absl::StatusOr<std::unique_ptr<AttentionSublayer>> MakeParallelAttention(
    ParameterStore& store, const ModelParallel& mp, const std::string& name, int64_t hidden,
    int64_t heads) {
  if (heads % (mp.tp_size() * mp.sp_size()) != 0) {
    return UsageError(absl::StrCat("model.dit_moe.num_heads=", heads,
                                   " must be divisible by parallel.tp * parallel.sp = ",
                                   mp.tp_size() * mp.sp_size()));
  }
  ColumnParallelLinear::Options qkv_options;
  qkv_options.out_blocks = 3;  // q, k, v: each split by heads
  qkv_options.sequence_parallel = mp.sequence_parallel;
  // Xavier over the single-rank [3D, D] weight, as MultiHeadAttention.
  qkv_options.weight_init = ParamInit::XavierUniform(hidden, 3 * hidden);
  TESSERA_ASSIGN_OR_RETURN(auto qkv, ColumnParallelLinear::Create(store, *mp.tp, name + ".qkv",
                                                                  hidden, 3 * hidden, qkv_options));
  RowParallelLinear::Options proj_options;
  proj_options.sequence_parallel = mp.sequence_parallel;
  TESSERA_ASSIGN_OR_RETURN(auto proj, RowParallelLinear::Create(store, *mp.tp, name + ".proj",
                                                                hidden, hidden, proj_options));
  std::optional<parallel::UlyssesAttention> core;
  if (mp.sp_size() > 1) {
    TESSERA_ASSIGN_OR_RETURN(core, parallel::UlyssesAttention::Create(
                                       *mp.sp, heads / mp.tp_size(), hidden / heads));
  }
  return std::make_unique<ParallelAttention>(mp, hidden, heads, std::move(qkv), std::move(proj),
                                             std::move(core));
}

absl::StatusOr<std::unique_ptr<FfnSublayer>> MakeParallelMoe(ParameterStore& store,
                                                             const ModelParallel& mp,
                                                             const std::string& name,
                                                             int64_t hidden,
                                                             const MoeLayer::Options& options) {
  parallel::ExpertParallelMoe::Groups groups;
  groups.balance = mp.tp_sp;
  if (mp.tp_size() > 1) groups.dense_spec = ParallelSpec::TensorPartial();
  TESSERA_ASSIGN_OR_RETURN(auto moe, parallel::ExpertParallelMoe::Create(store, *mp.ep, name,
                                                                         hidden, options, groups));
  auto layer = std::make_unique<ParallelMoe>(mp, std::move(moe));
  // Router, k routed experts and the shared expert per row (as MoeLayer).
  const double experts = 3.0 * 2.0 * hidden * static_cast<double>(options.expert_hidden);
  const double shared = 3.0 * 2.0 * hidden * static_cast<double>(options.shared_expert_hidden);
  layer->set_flops_per_row(2.0 * hidden * options.num_experts + options.top_k * experts + shared);
  return layer;
}

}  // namespace tessera::dit_moe
