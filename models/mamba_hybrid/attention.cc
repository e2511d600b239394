#include "models/mamba_hybrid/attention.h"

#include <cmath>

namespace tessera::mamba_hybrid {
namespace {

Linear::Options Projection(int64_t fan_in, double extra_scale, int64_t out_blocks = 1) {
  Linear::Options options;
  options.bias = false;
  options.out_blocks = out_blocks;
  options.weight_init =
      ParamInit::Uniform(static_cast<float>(extra_scale / std::sqrt(static_cast<double>(fan_in))));
  return options;
}

int64_t KvHeads(const MambaHybridConfig& c) {
  return c.num_query_groups() > 0 ? c.num_query_groups() : c.num_heads();
}

}  // namespace

CausalSelfAttention::CausalSelfAttention(ParameterStore& store, const std::string& name,
                                         const MambaHybridConfig& config)
    : heads_(config.num_heads()),
      kv_heads_(KvHeads(config)),
      head_dim_(config.hidden_size() / config.num_heads()),
      q_proj_(store, name + ".q_proj", config.hidden_size(), heads_ * head_dim_,
              Projection(config.hidden_size(), 1)),
      kv_proj_(store, name + ".kv_proj", config.hidden_size(), 2 * kv_heads_ * head_dim_,
               Projection(config.hidden_size(), 1, /*out_blocks=*/2)),
      out_proj_(store, name + ".out_proj", heads_ * head_dim_, config.hidden_size(),
                Projection(heads_ * head_dim_, 1 / std::sqrt(double(config.num_layers())))) {}

absl::StatusOr<Tensor> CausalSelfAttention::Forward(Arena& arena, const Tensor& x,
                                                    int64_t batch, int64_t seq) {
  batch_ = batch;
  seq_ = seq;
  Backend& backend = arena.backend();
  const int64_t rows = batch * seq, width = heads_ * head_dim_;
  const Tensor q = q_proj_.Forward(arena, x);    // [rows, H*Dh]
  const Tensor kv = kv_proj_.Forward(arena, x);  // [rows, 2, KV*Dh]
  qkv_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, 3, heads_, head_dim_});
  float* qkv = qkv_.ptr<float>();
  FillQkv(backend, q, kv, qkv, rows);
  const AttentionShape shape{batch, seq, heads_, head_dim_, 3 * width, /*causal=*/true};
  out_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, width});
  lse_ = arena.AllocateUninitialized(DType::kF32, Shape{batch, heads_, seq});
  backend.AttentionForward(shape, qkv, qkv + width, qkv + 2 * width, out_.ptr<float>(),
                           lse_.ptr<float>());
  return out_proj_.Forward(arena, out_);
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
  const Tensor q = q_proj_.Forward(arena, x);    // [1, H*Dh]
  const Tensor kv = kv_proj_.Forward(arena, x);  // [1, 2, KV*Dh]
  float* cache = cache_.ptr<float>();
  FillQkv(backend, q, kv, cache + cached_ * 3 * width, 1);
  ++cached_;
  const AttentionShape shape{1, cached_, heads_, head_dim_, 3 * width, /*causal=*/true};
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{cached_, width});
  Tensor lse = arena.AllocateUninitialized(DType::kF32, Shape{heads_, cached_});
  backend.AttentionForward(shape, cache, cache + width, cache + 2 * width, out.ptr<float>(),
                           lse.ptr<float>());
  return out_proj_.Forward(arena, out.Slice(cached_ - 1, cached_));
}

absl::StatusOr<Tensor> CausalSelfAttention::Backward(Arena& arena, const Tensor& dy) {
  Backend& backend = arena.backend();
  const int64_t rows = batch_ * seq_, width = heads_ * head_dim_, kv_width = kv_heads_ * head_dim_;
  const Tensor dout = out_proj_.Backward(arena, dy);
  Tensor dqkv = arena.AllocateUninitialized(DType::kF32, qkv_.shape());
  const float* qkv = qkv_.ptr<float>();
  float* d = dqkv.ptr<float>();
  const AttentionShape shape{batch_, seq_, heads_, head_dim_, 3 * width, /*causal=*/true};
  backend.AttentionBackward(shape, qkv, qkv + width, qkv + 2 * width, out_.ptr<float>(),
                            dout.ptr<float>(), lse_.ptr<float>(), d, d + width, d + 2 * width);
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
  Tensor dx = q_proj_.Backward(arena, dq);
  Tensor dx_kv = kv_proj_.Backward(arena, dkv);
  backend.AddInPlace(dx.ptr<float>(), dx_kv.ptr<float>(), dx.numel());
  qkv_ = out_ = lse_ = Tensor();
  return dx;
}

double CausalSelfAttention::ForwardFlops(int64_t batch, int64_t seq) const {
  const int64_t rows = batch * seq;
  // QK^T and PV over the causal half.
  const double scores = 2.0 * batch * static_cast<double>(seq) * seq * heads_ * head_dim_;
  return q_proj_.ForwardFlops(rows) + kv_proj_.ForwardFlops(rows) + out_proj_.ForwardFlops(rows) +
         scores;
}

double CausalSelfAttention::SavedFloatsPerToken() const {
  // q, kv (the projections' outputs), qkv, out, lse.
  const double width = static_cast<double>(heads_ * head_dim_);
  return width + 2.0 * kv_heads_ * head_dim_ + 3 * width + width + heads_;
}

}  // namespace tessera::mamba_hybrid
