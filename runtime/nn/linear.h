// Linear: y = x W^T + b, with W stored [out, in] (PyTorch's layout, so exported
// checkpoints read naturally elsewhere).
#pragma once

#include <optional>
#include <string>

#include "runtime/nn/parameter.h"
#include "runtime/tensor/arena.h"

namespace tessera {

// The mathematics of every linear layer, single-process or tensor-parallel
// (parallel/tensor_parallel adds only the communication around it). W is
// [out, in] at `weight`, in the tensors' backend memory.
//   y[rows, out] = x[rows, in] W^T (+ bias[out] when bias is non-null)
void LinearForward(Backend& backend, const Tensor& x, const float* weight, const float* bias,
                   const Tensor& y);
//   dweight[out, in] += dy^T x;  dbias[out] += sum_rows dy (when non-null);
//   dx[rows, in] = dy W (overwritten; skipped when dx is undefined).
void LinearBackward(Backend& backend, const Tensor& dy, const Tensor& x, const float* weight,
                    float* dweight, float* dbias, const Tensor& dx);
// The same with bf16 copies of the GEMM inputs for a bf16 run (GemmOperand;
// any copy may be null): x_bf16 of x, dy_bf16 of dy, weight.bf16 of W.
void LinearForward(Backend& backend, const Tensor& x, const uint16_t* x_bf16, GemmOperand weight,
                   const float* bias, const Tensor& y);
void LinearBackward(Backend& backend, const Tensor& dy, const uint16_t* dy_bf16, const Tensor& x,
                    const uint16_t* x_bf16, GemmOperand weight, float* dweight, float* dbias,
                    const Tensor& dx);

// An activation that several GEMMs read, rounded to bf16 once into `arena`
// when the arena's backend computes its GEMMs in bf16 (a bf16 run), so that
// no GEMM rounds it again; undefined in an fp32 run. Bf16Data gives the
// copy's bits, or null for an undefined tensor (GemmOperand's "no copy").
Tensor Bf16Copy(Arena& arena, const Tensor& x);
inline const uint16_t* Bf16Data(const Tensor& copy) {
  return copy.defined() ? static_cast<const uint16_t*>(copy.address()) : nullptr;
}

class Linear {
 public:
  struct Options {
    bool bias = true;
    std::optional<ParamInit> weight_init;  // default: Xavier uniform
    ParamInit bias_init = ParamInit::Zeros();
    bool weight_decay = true;
    // The output features are `out_blocks` stacked blocks (3 for a fused
    // q/k/v projection): W is registered as [out_blocks, out/out_blocks, in]
    // and b as [out_blocks, out/out_blocks] -- the same memory as [out, in],
    // but a shape in which tensor parallelism splits every block alike
    // (dim 1), so a checkpoint of either layout is the same tensor.
    int64_t out_blocks = 1;
    ParallelSpec spec = ParallelSpec::Replicated();  // of the weight and the bias
    // GEMMs in fp32 even when the run computes in bf16 (train.precision):
    // the MoE router, whose logits choose the experts.
    bool fp32_gemm = false;
  };

  Linear(ParameterStore& store, const std::string& name, int64_t in_features,
         int64_t out_features, const Options& options);
  Linear(ParameterStore& store, const std::string& name, int64_t in_features,
         int64_t out_features)
      : Linear(store, name, in_features, out_features, Options()) {}

  // x: [rows, in] -> [rows, out]. Keeps a view of x for Backward.
  Tensor Forward(Arena& arena, const Tensor& x);
  // dy: [rows, out] -> dx [rows, in]; dW, db accumulate. With need_dx false
  // returns an undefined tensor and skips that GEMM.
  Tensor Backward(Arena& arena, const Tensor& dy, bool need_dx = true);

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  ParameterStore::Id weight_id() const { return weight_; }
  ParameterStore::Id bias_id() const { return bias_; }
  // Multiply-adds of one forward pass over `rows` rows.
  double ForwardFlops(int64_t rows) const { return 2.0 * rows * in_ * out_; }

 private:
  ParameterStore& store_;
  bool fp32_gemm_ = false;
  int64_t in_, out_;
  ParameterStore::Id weight_ = -1;
  ParameterStore::Id bias_ = -1;
  Tensor saved_x_;
  Tensor saved_x_bf16_;  // x's bf16 copy in a bf16 run (read again by dW's GEMM)
};

}  // namespace tessera
