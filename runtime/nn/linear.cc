#include "runtime/nn/linear.h"

#include <optional>

namespace tessera {

Linear::Linear(ParameterStore& store, const std::string& name, int64_t in_features,
               int64_t out_features, const Options& options)
    : store_(store), fp32_gemm_(options.fp32_gemm), in_(in_features), out_(out_features) {
  const ParamInit weight_init =
      options.weight_init.value_or(ParamInit::XavierUniform(in_features, out_features));
  const int64_t blocks = options.out_blocks;
  TESSERA_CHECK(blocks >= 1 && out_features % blocks == 0);
  const Shape weight_shape = blocks == 1 ? Shape{out_features, in_features}
                                         : Shape{blocks, out_features / blocks, in_features};
  weight_ = store.Register(name + ".weight", weight_shape, weight_init, options.weight_decay,
                           options.spec);
  if (options.bias) {
    const Shape bias_shape =
        blocks == 1 ? Shape{out_features} : Shape{blocks, out_features / blocks};
    bias_ = store.Register(name + ".bias", bias_shape, options.bias_init,
                           /*weight_decay=*/false, options.spec);
  }
}

void LinearForward(Backend& backend, const Tensor& x, const float* weight, const float* bias,
                   const Tensor& y) {
  LinearForward(backend, x, nullptr, GemmOperand{weight}, bias, y);
}

void LinearBackward(Backend& backend, const Tensor& dy, const Tensor& x, const float* weight,
                    float* dweight, float* dbias, const Tensor& dx) {
  LinearBackward(backend, dy, nullptr, x, nullptr, GemmOperand{weight}, dweight, dbias, dx);
}

void LinearForward(Backend& backend, const Tensor& x, const uint16_t* x_bf16, GemmOperand weight,
                   const float* bias, const Tensor& y) {
  const int64_t rows = x.dim(0), in = x.dim(1), out = y.dim(1);
  backend.GemmOperands(false, true, rows, out, in, 1.0f, {x.ptr<float>(), x_bf16}, in, weight, in,
                       0.0f, y.ptr<float>(), out);
  if (bias != nullptr) backend.AddBiasRows(y.ptr<float>(), bias, rows, out);
}

void LinearBackward(Backend& backend, const Tensor& dy, const uint16_t* dy_bf16, const Tensor& x,
                    const uint16_t* x_bf16, GemmOperand weight, float* dweight, float* dbias,
                    const Tensor& dx) {
  const int64_t rows = x.dim(0), in = x.dim(1), out = dy.dim(1);
  const GemmOperand dy_operand{dy.ptr<float>(), dy_bf16};
  backend.GemmOperands(true, false, out, in, rows, 1.0f, dy_operand, out, {x.ptr<float>(), x_bf16},
                       in, 1.0f, dweight, in);
  if (dbias != nullptr) backend.SumRowsAccumulate(dy.ptr<float>(), dbias, rows, out);
  if (dx.defined()) {
    backend.GemmOperands(false, false, rows, in, out, 1.0f, dy_operand, out, weight, in, 0.0f,
                         dx.ptr<float>(), in);
  }
}

Tensor Bf16Copy(Arena& arena, const Tensor& x) {
  Backend& backend = arena.backend();
  if (backend.gemm_precision() != MathPrecision::kBf16) return Tensor();
  Tensor copy = arena.AllocateUninitialized(DType::kBF16, x.shape());
  backend.RoundToBf16(x.ptr<float>(), static_cast<uint16_t*>(copy.address()), x.numel());
  return copy;
}

Tensor Linear::Forward(Arena& arena, const Tensor& x) {
  TESSERA_CHECK(x.rank() == 2 && x.dim(1) == in_);
  Tensor y = arena.AllocateUninitialized(DType::kF32, Shape{x.dim(0), out_});  // [rows, out]
  std::optional<ScopedGemmPrecision> fp32;
  if (fp32_gemm_) fp32.emplace(arena.backend(), MathPrecision::kFp32);
  // In a bf16 run x is rounded once here for this GEMM and dW's, and W's
  // copy comes from the store (made once per step).
  saved_x_bf16_ = Bf16Copy(arena, x);
  LinearForward(arena.backend(), x, Bf16Data(saved_x_bf16_),
                {store_.param(weight_).ptr<float>(), store_.param_bf16(weight_)},
                bias_ >= 0 ? store_.param(bias_).ptr<float>() : nullptr, y);
  saved_x_ = x;
  return y;
}

Tensor Linear::Backward(Arena& arena, const Tensor& dy, bool need_dx) {
  const int64_t rows = dy.dim(0);
  TESSERA_CHECK(dy.rank() == 2 && dy.dim(1) == out_ && saved_x_.dim(0) == rows);
  Tensor dx;
  if (need_dx) dx = arena.AllocateUninitialized(DType::kF32, Shape{rows, in_});  // [rows, in]
  std::optional<ScopedGemmPrecision> fp32;
  if (fp32_gemm_) fp32.emplace(arena.backend(), MathPrecision::kFp32);
  // dy feeds two GEMMs (dW and dx): rounded once.
  const Tensor dy_bf16 = need_dx ? Bf16Copy(arena, dy) : Tensor();
  LinearBackward(arena.backend(), dy, Bf16Data(dy_bf16), saved_x_, Bf16Data(saved_x_bf16_),
                 {store_.param(weight_).ptr<float>(), store_.param_bf16(weight_)},
                 store_.grad(weight_).ptr<float>(),
                 bias_ >= 0 ? store_.grad(bias_).ptr<float>() : nullptr, dx);
  saved_x_ = saved_x_bf16_ = Tensor();
  return dx;
}

}  // namespace tessera
