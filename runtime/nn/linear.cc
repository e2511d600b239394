#include "runtime/nn/linear.h"

#include "runtime/kernels/cpu/activation.h"
#include "runtime/kernels/cpu/gemm.h"

namespace tessera {

Linear::Linear(ParameterStore& store, const std::string& name, int64_t in_features,
               int64_t out_features, const Options& options)
    : store_(store), in_(in_features), out_(out_features) {
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

Tensor Linear::Forward(Arena& arena, const Tensor& x) {
  TESSERA_CHECK(x.rank() == 2 && x.dim(1) == in_);
  const int64_t rows = x.dim(0);
  Tensor y = arena.AllocateUninitialized(DType::kF32, Shape{rows, out_});  // [rows, out]
  cpu::Gemm(false, true, rows, out_, in_, 1.0f, x.data<float>(), in_,
            store_.param(weight_).data<float>(), in_, 0.0f, y.data<float>(), out_);
  if (bias_ >= 0) cpu::AddBiasRows(y.data<float>(), store_.param(bias_).data<float>(), rows, out_);
  saved_x_ = x;
  return y;
}

Tensor Linear::Backward(Arena& arena, const Tensor& dy, bool need_dx) {
  const int64_t rows = dy.dim(0);
  TESSERA_CHECK(dy.rank() == 2 && dy.dim(1) == out_ && saved_x_.dim(0) == rows);
  // dW[out, in] += dy^T x
  cpu::Gemm(true, false, out_, in_, rows, 1.0f, dy.data<float>(), out_, saved_x_.data<float>(),
            in_, 1.0f, store_.grad(weight_).data<float>(), in_);
  if (bias_ >= 0) cpu::SumRowsAccumulate(dy.data<float>(), store_.grad(bias_).data<float>(), rows, out_);
  Tensor dx;
  if (need_dx) {
    dx = arena.AllocateUninitialized(DType::kF32, Shape{rows, in_});  // [rows, in]
    cpu::Gemm(false, false, rows, in_, out_, 1.0f, dy.data<float>(), out_,
              store_.param(weight_).data<float>(), in_, 0.0f, dx.data<float>(), in_);
  }
  saved_x_ = Tensor();
  return dx;
}

}  // namespace tessera
