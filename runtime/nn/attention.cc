#include "runtime/nn/attention.h"

namespace tessera {
Linear::Options MultiHeadAttention::QkvOptions() {
  Linear::Options options;
  options.out_blocks = 3;
  return options;
}

MultiHeadAttention::MultiHeadAttention(ParameterStore& store, const std::string& name,
                                       int64_t hidden, int64_t heads, bool causal)
    : hidden_(hidden),
      heads_(heads),
      causal_(causal),
      qkv_(store, name + ".qkv", hidden, 3 * hidden, QkvOptions()),
      proj_(store, name + ".proj", hidden, hidden) {
  TESSERA_CHECK(hidden % heads == 0);
}

Tensor MultiHeadAttention::Forward(Arena& arena, const Tensor& x, int64_t batch, int64_t seq) {
  batch_ = batch;
  seq_ = seq;
  Backend& backend = arena.backend();
  saved_qkv_ = qkv_.Forward(arena, x);  // [B*S, 3, H, Dh]
  const float* qkv = saved_qkv_.ptr<float>();
  AttentionShape shape{batch, seq, heads_, hidden_ / heads_, 3 * hidden_, causal_};
  saved_out_ = arena.AllocateUninitialized(DType::kF32, Shape{batch * seq, hidden_});
  saved_lse_ = arena.AllocateUninitialized(DType::kF32, Shape{batch, heads_, seq});
  backend.AttentionForward(shape, qkv, qkv + hidden_, qkv + 2 * hidden_, saved_out_.ptr<float>(),
                        saved_lse_.ptr<float>());
  return proj_.Forward(arena, saved_out_);
}

Tensor MultiHeadAttention::Backward(Arena& arena, const Tensor& dy) {
  Tensor dout = proj_.Backward(arena, dy);  // [B*S, hidden]
  Tensor dqkv = arena.AllocateUninitialized(DType::kF32, saved_qkv_.shape());
  const float* qkv = saved_qkv_.ptr<float>();
  float* d = dqkv.ptr<float>();
  Backend& backend = arena.backend();
  AttentionShape shape{batch_, seq_, heads_, hidden_ / heads_, 3 * hidden_, causal_};
  backend.AttentionBackward(shape, qkv, qkv + hidden_, qkv + 2 * hidden_, saved_out_.ptr<float>(),
                         dout.ptr<float>(), saved_lse_.ptr<float>(), d, d + hidden_,
                         d + 2 * hidden_);
  saved_qkv_ = saved_out_ = saved_lse_ = Tensor();
  return qkv_.Backward(arena, dqkv);
}

double MultiHeadAttention::ForwardFlops(int64_t batch, int64_t seq) const {
  const int64_t rows = batch * seq;
  const double scores = 4.0 * batch * seq * seq * hidden_;  // QK^T and PV
  return qkv_.ForwardFlops(rows) + proj_.ForwardFlops(rows) + (causal_ ? scores / 2 : scores);
}

}  // namespace tessera
