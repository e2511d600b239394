#include "models/mamba_hybrid/attention.h"

#include <cmath>

#include "runtime/base/status.h"
#include "runtime/nn/linear.h"

namespace tessera::mamba_hybrid {
namespace {

ParamInit Projection(int64_t fan_in, double extra_scale) {
  return ParamInit::Uniform(static_cast<float>(extra_scale / std::sqrt(static_cast<double>(fan_in))));
}

int64_t KvHeads(const MambaHybridConfig& c) {
  return c.num_query_groups() > 0 ? c.num_query_groups() : c.num_heads();
}

}  // namespace

CausalSelfAttention::CausalSelfAttention(ParameterStore& store, const std::string& name,
                                         const MambaHybridConfig& config,
                                         const HybridLayout& layout)
    : store_(store),
      layout_(layout),
      hidden_(config.hidden_size()),
      heads_(config.num_heads() / layout.tp_size()),
      kv_heads_(KvHeads(config) / layout.tp_size()),
      head_dim_(config.hidden_size() / config.num_heads()) {
  const int64_t D = hidden_, width = config.num_heads() * head_dim_;
  const int64_t kv_width = KvHeads(config) * head_dim_;
  q_proj_ = RegisterTpSplit(store, layout, name + ".q_proj.weight", Shape{width, D}, 0,
                            Projection(D, 1), true);
  kv_proj_ = RegisterTpSplit(store, layout, name + ".kv_proj.weight", Shape{2, kv_width, D}, 1,
                             Projection(D, 1), true);
  out_proj_ = RegisterTpSplit(store, layout, name + ".out_proj.weight", Shape{D, width}, 1,
                              Projection(width, 1 / std::sqrt(double(config.num_layers()))), true);
  if (config.rope_base() > 0) rope_.emplace(config.rope_base(), head_dim_);
  if (layout.sp_size() > 1) {
    // The config rules checked num_heads % (tp * sp).
    ulysses_ = *parallel::UlyssesAttention::Create(*layout.sp, heads_, head_dim_, /*causal=*/true);
  }
}

absl::StatusOr<Tensor> CausalSelfAttention::Forward(Arena& arena, const Tensor& x_local,
                                                    int64_t batch, int64_t /*seq*/) {
  Backend& backend = arena.backend();
  TESSERA_ASSIGN_OR_RETURN(u_, EnterTpRegion(arena, layout_, x_local, batch));
  batch_ = batch;
  seq_ = u_.dim(0) / batch;  // the sp shard's positions
  const int64_t rows = batch_ * seq_, width = heads_ * head_dim_;
  const Tensor q = ProjectForward(arena, store_, {{q_proj_, width}}, u_);  // [rows, H*Dh]
  const Tensor kv =
      ProjectForward(arena, store_, {{kv_proj_, 2 * kv_heads_ * head_dim_}}, u_);  // [rows, 2, KV*Dh]
  qkv_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, 3, heads_, head_dim_});
  FillQkv(backend, q, kv, qkv_.ptr<float>(), rows);
  if (rope_) {
    // q and the repeated k: the first 2H heads of each row, at the shard's
    // positions in the whole sequence.
    rope_->Apply(arena, qkv_.ptr<float>(), 3 * width, batch_, seq_, 2 * heads_,
                 layout_.sp_rank() * seq_, /*inverse=*/false);
  }
  TESSERA_RETURN_IF_ERROR(Attend(arena));
  Tensor partial = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
  LinearForward(backend, out_, store_.param(out_proj_).ptr<float>(), nullptr, partial);
  return ExitTpRegion(arena, layout_, partial, batch_);  // out_proj is row-parallel
}

absl::Status CausalSelfAttention::Attend(Arena& arena) {
  const int64_t width = heads_ * head_dim_;
  const float* qkv = qkv_.ptr<float>();
  if (ulysses_) {
    // Whole sequences of H / sp heads on each sp rank, and back.
    TESSERA_ASSIGN_OR_RETURN(out_, ulysses_->Forward(arena, batch_, seq_ * layout_.sp_size(),
                                                     3 * width, qkv, qkv + width,
                                                     qkv + 2 * width));
    return absl::OkStatus();
  }
  const AttentionShape shape{batch_, seq_, heads_, head_dim_, 3 * width, /*causal=*/true};
  out_ = arena.AllocateUninitialized(DType::kF32, Shape{batch_ * seq_, width});
  lse_ = arena.AllocateUninitialized(DType::kF32, Shape{batch_, heads_, seq_});
  arena.backend().AttentionForward(shape, qkv, qkv + width, qkv + 2 * width, out_.ptr<float>(),
                                   lse_.ptr<float>());
  return absl::OkStatus();
}

absl::Status CausalSelfAttention::AttendBackward(Arena& arena, const Tensor& dout, float* d) {
  const int64_t width = heads_ * head_dim_;
  if (ulysses_) return ulysses_->Backward(arena, dout, d, d + width, d + 2 * width);
  const float* qkv = qkv_.ptr<float>();
  const AttentionShape shape{batch_, seq_, heads_, head_dim_, 3 * width, /*causal=*/true};
  arena.backend().AttentionBackward(shape, qkv, qkv + width, qkv + 2 * width, out_.ptr<float>(),
                                    dout.ptr<float>(), lse_.ptr<float>(), d, d + width,
                                    d + 2 * width);
  return absl::OkStatus();
}

void CausalSelfAttention::FillQkv(Backend& backend, const Tensor& q, const Tensor& kv, float* qkv,
                                  int64_t rows) const {
  const int64_t width = heads_ * head_dim_, kv_width = kv_heads_ * head_dim_;
  const size_t qkv_pitch = 3 * width * sizeof(float), kv_pitch = 2 * kv_width * sizeof(float);
  const size_t head_bytes = head_dim_ * sizeof(float);
  backend.Copy2D(qkv, qkv_pitch, q.ptr<float>(), width * sizeof(float), width * sizeof(float),
                 rows);
  const int64_t repeat = heads_ / kv_heads_;
  for (int64_t h = 0; h < heads_; ++h) {
    const float* k_head = kv.ptr<float>() + (h / repeat) * head_dim_;
    for (int64_t part = 1; part <= 2; ++part) {  // k, then v
      backend.Copy2D(qkv + part * width + h * head_dim_, qkv_pitch,
                     k_head + (part - 1) * kv_width, kv_pitch, head_bytes, rows);
    }
  }
}

absl::Status CausalSelfAttention::StartGeneration(Backend& backend, int64_t batch,
                                                  int64_t max_len) {
  if (batch != 1) {
    return absl::InvalidArgumentError("attention layers generate one sequence at a time");
  }
  cache_ = Tensor::Empty(DType::kF32, Shape{max_len, 3, heads_, head_dim_}, backend);
  if (rope_) rope_->Reserve(backend, max_len);
  backend.Memset(cache_.address(), 0, cache_.bytes());
  cached_ = 0;
  return absl::OkStatus();
}

absl::StatusOr<Tensor> CausalSelfAttention::Step(Arena& arena, const Tensor& x) {
  if (cached_ >= cache_.dim(0)) {
    return absl::OutOfRangeError("generation ran past the key/value cache's length");
  }
  Backend& backend = arena.backend();
  const int64_t width = heads_ * head_dim_;
  const Tensor q = ProjectForward(arena, store_, {{q_proj_, width}}, x);  // [1, H*Dh]
  const Tensor kv = ProjectForward(arena, store_, {{kv_proj_, 2 * kv_heads_ * head_dim_}}, x);
  float* cache = cache_.ptr<float>();
  FillQkv(backend, q, kv, cache + cached_ * 3 * width, 1);
  if (rope_) {
    rope_->Apply(arena, cache + cached_ * 3 * width, 3 * width, 1, 1, 2 * heads_, cached_,
                 /*inverse=*/false);
  }
  ++cached_;
  const AttentionShape shape{1, cached_, heads_, head_dim_, 3 * width, /*causal=*/true};
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{cached_, width});
  Tensor lse = arena.AllocateUninitialized(DType::kF32, Shape{heads_, cached_});
  backend.AttentionForward(shape, cache, cache + width, cache + 2 * width, out.ptr<float>(),
                           lse.ptr<float>());
  Tensor partial = arena.AllocateUninitialized(DType::kF32, Shape{1, hidden_});
  LinearForward(backend, out.Slice(cached_ - 1, cached_), store_.param(out_proj_).ptr<float>(),
                nullptr, partial);
  return ExitTpRegion(arena, layout_, partial, 1);
}

absl::StatusOr<Tensor> CausalSelfAttention::Backward(Arena& arena, const Tensor& dy_local) {
  Backend& backend = arena.backend();
  const int64_t rows = batch_ * seq_, width = heads_ * head_dim_, kv_width = kv_heads_ * head_dim_;
  TESSERA_ASSIGN_OR_RETURN(const Tensor dy, ExitTpRegionBackward(arena, layout_, dy_local, batch_));
  Tensor dout = arena.AllocateUninitialized(DType::kF32, out_.shape());
  LinearBackward(backend, dy, out_, store_.param(out_proj_).ptr<float>(),
                 store_.grad(out_proj_).ptr<float>(), nullptr, dout);
  Tensor dqkv = arena.AllocateUninitialized(DType::kF32, qkv_.shape());
  float* d = dqkv.ptr<float>();
  TESSERA_RETURN_IF_ERROR(AttendBackward(arena, dout, d));
  if (rope_) {
    // The rotation's transpose: the gradients of q and k before it.
    rope_->Apply(arena, d, 3 * width, batch_, seq_, 2 * heads_, layout_.sp_rank() * seq_,
                 /*inverse=*/true);
  }
  const size_t qkv_pitch = 3 * width * sizeof(float);
  Tensor dq = arena.AllocateUninitialized(DType::kF32, Shape{rows, width});
  backend.Copy2D(dq.ptr<float>(), width * sizeof(float), d, qkv_pitch, width * sizeof(float),
                 rows);
  // Sum the gradients of the repeated heads: per part, copy out the H heads
  // ([rows * KV, repeat * Dh] once contiguous), add the `repeat` column blocks.
  const int64_t repeat = heads_ / kv_heads_;
  Tensor dkv = arena.AllocateUninitialized(DType::kF32, Shape{rows, 2 * kv_width});
  Tensor all_heads = arena.AllocateUninitialized(DType::kF32, Shape{rows, width});
  Tensor one = arena.AllocateUninitialized(DType::kF32, Shape{rows, kv_width});
  Tensor sum = arena.AllocateUninitialized(DType::kF32, Shape{rows, kv_width});
  const size_t head_bytes = head_dim_ * sizeof(float);
  for (int64_t part = 1; part <= 2; ++part) {
    backend.Copy2D(all_heads.ptr<float>(), width * sizeof(float), d + part * width, qkv_pitch,
                   width * sizeof(float), rows);
    for (int64_t r = 0; r < repeat; ++r) {
      Tensor& target = r == 0 ? sum : one;
      backend.Copy2D(target.ptr<float>(), head_bytes, all_heads.ptr<float>() + r * head_dim_,
                     repeat * head_bytes, head_bytes, rows * kv_heads_);
      if (r > 0) backend.AddInPlace(sum.ptr<float>(), one.ptr<float>(), sum.numel());
    }
    backend.Copy2D(dkv.ptr<float>() + (part - 1) * kv_width, 2 * kv_width * sizeof(float),
                   sum.ptr<float>(), kv_width * sizeof(float), kv_width * sizeof(float), rows);
  }
  Tensor dx = ProjectBackward(arena, store_, {{q_proj_, width}}, dq, u_);
  const Tensor dx_kv = ProjectBackward(arena, store_, {{kv_proj_, 2 * kv_width}}, dkv, u_);
  backend.AddInPlace(dx.ptr<float>(), dx_kv.ptr<float>(), dx.numel());
  u_ = qkv_ = out_ = lse_ = Tensor();
  return EnterTpRegionBackward(arena, layout_, dx, batch_);
}

double CausalSelfAttention::ForwardFlops(int64_t batch, int64_t seq) const {
  // This rank's heads over all `seq` rows of its sp shard (the tp region
  // works on every row, also under Megatron SP): the projections, and QK^T
  // and PV over the causal half of whole sequences (Ulysses: its H/sp).
  const double rows = static_cast<double>(batch) * seq;
  const double width = static_cast<double>(heads_ * head_dim_);
  const double full_seq = rows / batch * layout_.sp_size();
  const double scores = 2.0 * batch * full_seq * full_seq * width / layout_.sp_size();
  return 2.0 * rows * hidden_ * (2 * width + 2.0 * kv_heads_ * head_dim_) + scores;
}

double CausalSelfAttention::SavedFloatsPerToken() const {
  // u, q, kv (the projections' outputs), qkv, out, lse.
  const double width = static_cast<double>(heads_ * head_dim_);
  return hidden_ + width + 2.0 * kv_heads_ * head_dim_ + 3 * width + width + heads_;
}

}  // namespace tessera::mamba_hybrid
