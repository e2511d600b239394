#include "models/hstu/layer.h"

#include <cmath>

#include "runtime/base/errors.h"

namespace tessera::hstu {
namespace {

constexpr float kNormEps = 1e-6f;  // the reference's layer norms

Linear::Options UvqkOptions() {
  Linear::Options options;
  options.bias = false;
  options.weight_init = ParamInit::Normal(0.02f);
  return options;
}

}  // namespace

Tensor ApplyDropout(Arena& arena, const Tensor& x, const Tensor& mask) {
  const int64_t rows = x.dim(0), width = x.dim(1);
  Tensor y = arena.Allocate(DType::kF32, Shape{rows, width});  // zeros
  arena.backend().GatedResidualForward(y.ptr<float>(), x.ptr<float>(), mask.ptr<float>(), rows,
                                       /*seq=*/1, width, /*cond_stride=*/width);
  return y;
}

HstuLayer::HstuLayer(ParameterStore& store, const std::string& name, const HstuLayerDims& dims)
    : store_(store),
      dims_(dims),
      input_norm_(store, name + ".input_norm", dims.dim, /*affine=*/false, kNormEps),
      uvqk_(store, name + ".uvqk", dims.dim, dims.fused(), UvqkOptions()),
      o_(store, name + ".o", dims.gated(), dims.dim) {
  pos_bias_ = store.Register(name + ".pos_bias", Shape{2 * dims.max_len - 1},
                             ParamInit::Normal(0.02f), /*weight_decay=*/false);
  time_bias_ = store.Register(name + ".time_bias", Shape{dims.num_time_buckets + 1},
                              ParamInit::Normal(0.02f), /*weight_decay=*/false);
}

Tensor HstuLayer::Forward(Arena& arena, const Tensor& x, const JaggedTokens& tokens,
                          const Tensor& dropout_mask) {
  TESSERA_CHECK(x.rank() == 2 && x.dim(0) == tokens.total && x.dim(1) == dims_.dim);
  Backend& backend = arena.backend();
  const int64_t total = tokens.total, width = dims_.fused(), gated = dims_.gated();
  const int64_t hv = dims_.heads * dims_.linear_dim, hqk = dims_.heads * dims_.attention_dim;
  tokens_ = tokens;
  projected_ = uvqk_.Forward(arena, input_norm_.Forward(arena, x));  // [total, fused]
  fused_ = arena.AllocateUninitialized(DType::kF32, Shape{total, width});
  backend.SiluForward(projected_.ptr<float>(), fused_.ptr<float>(), total * width);
  const float* f = fused_.ptr<float>();  // row = [U | V | Q | K]
  attention_ = arena.AllocateUninitialized(DType::kF32, Shape{total, gated});
  backend.HstuAttentionForward(tokens.offsets, tokens.users, dims_.max_len, dims_.heads,
                               dims_.attention_dim, dims_.linear_dim, f + 2 * hv, f + 2 * hv + hqk,
                               width, f + hv, width, store_.param(pos_bias_).ptr<float>(),
                               store_.param(time_bias_).ptr<float>(), dims_.num_time_buckets,
                               tokens.timestamps, tokens.query_timestamps,
                               attention_.ptr<float>());
  Tensor gate = arena.AllocateUninitialized(DType::kF32, Shape{total, gated});
  gate_mean_ = arena.AllocateUninitialized(DType::kF32, Shape{total});
  gate_rstd_ = arena.AllocateUninitialized(DType::kF32, Shape{total});
  backend.HstuNormGateForward(attention_.ptr<float>(), f, width, gate.ptr<float>(),
                              gate_mean_.ptr<float>(), gate_rstd_.ptr<float>(), total, gated,
                              kNormEps);
  dropout_mask_ = dropout_mask;
  if (dropout_mask.defined()) gate = ApplyDropout(arena, gate, dropout_mask);
  Tensor y = o_.Forward(arena, gate);  // [total, D]
  backend.AddInPlace(y.ptr<float>(), x.ptr<float>(), total * dims_.dim);
  return y;
}

Tensor HstuLayer::Backward(Arena& arena, const Tensor& dy) {
  Backend& backend = arena.backend();
  const int64_t total = tokens_.total, width = dims_.fused(), gated = dims_.gated();
  const int64_t hv = dims_.heads * dims_.linear_dim, hqk = dims_.heads * dims_.attention_dim;
  Tensor dgate = o_.Backward(arena, dy);  // [total, H dv]
  if (dropout_mask_.defined()) dgate = ApplyDropout(arena, dgate, dropout_mask_);
  // Every column of dfused is written: U by the gate, V, Q, K by attention.
  Tensor dfused = arena.AllocateUninitialized(DType::kF32, Shape{total, width});
  Tensor dattention = arena.AllocateUninitialized(DType::kF32, Shape{total, gated});
  const float* f = fused_.ptr<float>();
  float* df = dfused.ptr<float>();
  backend.HstuNormGateBackward(dgate.ptr<float>(), attention_.ptr<float>(), f, width,
                               gate_mean_.ptr<float>(), gate_rstd_.ptr<float>(),
                               dattention.ptr<float>(), df, total, gated);
  backend.HstuAttentionBackward(
      tokens_.offsets, tokens_.users, dims_.max_len, dims_.heads, dims_.attention_dim,
      dims_.linear_dim, f + 2 * hv, f + 2 * hv + hqk, width, f + hv, width,
      store_.param(pos_bias_).ptr<float>(), store_.param(time_bias_).ptr<float>(),
      dims_.num_time_buckets, tokens_.timestamps, tokens_.query_timestamps,
      dattention.ptr<float>(), df + 2 * hv, df + 2 * hv + hqk, df + hv,
      store_.grad(pos_bias_).ptr<float>(), store_.grad(time_bias_).ptr<float>());
  Tensor dprojected = arena.AllocateUninitialized(DType::kF32, Shape{total, width});
  backend.SiluBackward(df, projected_.ptr<float>(), dprojected.ptr<float>(), total * width);
  Tensor dx = input_norm_.Backward(arena, uvqk_.Backward(arena, dprojected));
  backend.AddInPlace(dx.ptr<float>(), dy.ptr<float>(), total * dims_.dim);
  projected_ = fused_ = attention_ = gate_mean_ = gate_rstd_ = dropout_mask_ = Tensor();
  return dx;
}

double HstuLayer::ProjectionFlops(int64_t tokens) const {
  return uvqk_.ForwardFlops(tokens) + o_.ForwardFlops(tokens);
}

}  // namespace tessera::hstu
