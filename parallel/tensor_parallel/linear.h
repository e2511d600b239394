// Megatron-style tensor-parallel linear layers (Shoeybi et al. 2019; sequence
// parallelism: Korthikanti et al. 2022) over one tp Communicator.
//
// Both compute the single-rank tessera::Linear (y = x W^T + b, W [out, in])
// with W split over the tp ranks:
//
//   ColumnParallelLinear  W split along out (dim 0): rank r holds rows
//       [r*out/tp, (r+1)*out/tp) of W and of b. x is replicated, y is split
//       along columns. Collective pair ("copy to tp region"): identity
//       forward, all-reduce(sum) of dx backward.
//   RowParallelLinear     W split along in (dim 1): rank r holds columns
//       [r*in/tp, (r+1)*in/tp). x arrives split along columns (the output of
//       a column-parallel layer), y is replicated. Pair ("reduce from tp
//       region"): all-reduce(sum) forward, identity backward. b is
//       replicated and added once, after the reduction.
//
// With sequence_parallel the activations outside the pair are split along
// rows (tokens) instead of replicated: rank r holds rows [r*rows/tp,
// (r+1)*rows/tp). The column layer all-gathers x along rows in forward and
// reduce-scatters dx in backward; the row layer reduce-scatters y in forward
// and all-gathers dy in backward.
//
// Every rank of the tp group must call Forward/Backward in the same order
// with the same row counts and the same need_dx (collectives match by
// order). Size errors (a dimension not divisible by tp) are UsageErrors
// (exit code 2) naming the quantity; collective failures are passed on.
//
// Parameters are registered with their global names, ParallelSpec{kSplit,
// split_dim} (the row layer's bias: replicated) and initialised so that
// every piece equals the corresponding slice of the single-rank Linear's
// initial values — see RegisterSplitParameter for the current limitation.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "runtime/nn/parameter.h"
#include "runtime/tensor/arena.h"

namespace tessera::parallel {

// Registers rank `tp.rank()`'s piece of a parameter of `global_shape` split
// into tp.size() equal parts along `split_dim` (which the caller has checked
// divides). Spec: {kSplit, split_dim}. The global name and shape are the
// single-rank layer's, and so (ParameterStore initializes by global index)
// are the initial values of the piece.
ParameterStore::Id RegisterSplitParameter(ParameterStore& store, const Communicator& tp,
                                          const std::string& name, const Shape& global_shape,
                                          int split_dim, ParamInit init, bool weight_decay);

struct TensorParallelLinearOptions {
  bool bias = true;
  // Default: Xavier uniform over the *global* fan-in/fan-out, as the
  // single-rank layer.
  std::optional<ParamInit> weight_init;
  ParamInit bias_init = ParamInit::Zeros();
  bool weight_decay = true;
  bool sequence_parallel = false;
  // Column layer only: all-gather y along columns so the output is the full
  // [rows, out] (backward takes this rank's columns of dy).
  bool gather_output = false;
  // Column layer only: the output features are `out_blocks` stacked blocks
  // (3 for a fused q/k/v projection), each split over tp, so rank r holds
  // block-rows [r*out/(blocks*tp), ...) of every block: its output is
  // [rows, blocks, out/(blocks*tp)]. Registered as Linear::Options::out_blocks
  // registers ([blocks, out/blocks, in], split along dim 1). Excludes
  // gather_output.
  int64_t out_blocks = 1;
};

class ColumnParallelLinear {
 public:
  using Options = TensorParallelLinearOptions;
  // Fails (UsageError) unless out_features % tp.size() == 0. `tp` and
  // `store` must outlive the layer.
  static absl::StatusOr<std::unique_ptr<ColumnParallelLinear>> Create(
      ParameterStore& store, Communicator& tp, const std::string& name, int64_t in_features,
      int64_t out_features, const Options& options);

  // x: [rows, in] (sequence_parallel: this rank's [rows/tp, in]) ->
  // [rows, out/tp], or [rows, out] with gather_output. Keeps the (gathered)
  // input for Backward.
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x);
  // dy: shaped as Forward's output. Accumulates this rank's dW/db pieces and
  // returns dx shaped as Forward's input (undefined, and no collective, when
  // need_dx is false).
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy, bool need_dx = true);

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  int64_t local_out_features() const { return out_local_; }
  ParameterStore::Id weight_id() const { return weight_; }  // [out/tp, in]
  ParameterStore::Id bias_id() const { return bias_; }      // [out/tp], -1 without bias

 private:
  ColumnParallelLinear(ParameterStore& store, Communicator& tp, int64_t in, int64_t out,
                       const Options& options);
  ParameterStore& store_;
  Communicator& tp_;
  int64_t in_, out_, out_local_;
  Options options_;
  ParameterStore::Id weight_ = -1;
  ParameterStore::Id bias_ = -1;
  Tensor saved_x_;  // [rows, in], gathered under sequence parallelism
};

class RowParallelLinear {
 public:
  using Options = TensorParallelLinearOptions;  // gather_output must be false
  // Fails (UsageError) unless in_features % tp.size() == 0.
  static absl::StatusOr<std::unique_ptr<RowParallelLinear>> Create(
      ParameterStore& store, Communicator& tp, const std::string& name, int64_t in_features,
      int64_t out_features, const Options& options);

  // x: this rank's columns [rows, in/tp] -> [rows, out] (sequence_parallel:
  // this rank's rows [rows/tp, out]; rows % tp must be 0).
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x);
  // dy: shaped as Forward's output -> dx [rows, in/tp]. Accumulates this
  // rank's dW piece and the full db.
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy, bool need_dx = true);

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  int64_t local_in_features() const { return in_local_; }
  ParameterStore::Id weight_id() const { return weight_; }  // [out, in/tp]
  ParameterStore::Id bias_id() const { return bias_; }      // [out], replicated

 private:
  RowParallelLinear(ParameterStore& store, Communicator& tp, int64_t in, int64_t out,
                    const Options& options);
  ParameterStore& store_;
  Communicator& tp_;
  int64_t in_, in_local_, out_;
  Options options_;
  ParameterStore::Id weight_ = -1;
  ParameterStore::Id bias_ = -1;
  Tensor saved_x_;  // [rows, in/tp]
};

}  // namespace tessera::parallel
