#include "parallel/tensor_parallel/linear.h"

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/nn/linear.h"

namespace tessera::parallel {
namespace {

absl::Status CheckDivisible(absl::string_view what, int64_t value, const Communicator& tp) {
  if (tp.size() > 0 && value % tp.size() == 0) return absl::OkStatus();
  return UsageError(absl::StrCat(what, " (", value,
                                 ") must be divisible by the tensor-parallel size ", tp.size(),
                                 " (group ", tp.name(), ")"));
}

absl::Status CheckMatrix(absl::string_view what, const Tensor& t, int64_t cols) {
  if (t.defined() && t.dtype() == DType::kF32 && t.rank() == 2 && t.dim(1) == cols) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(what, " must be f32 [rows, ", cols, "], got ",
                                                 t.defined() ? t.DebugString() : "undefined"));
}

// [rows_local, cols] on every rank -> [tp * rows_local, cols], rank order.
absl::StatusOr<Tensor> AllGatherRows(Arena& arena, Communicator& tp, const Tensor& x) {
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{tp.size() * x.dim(0), x.dim(1)});
  TESSERA_RETURN_IF_ERROR(
      tp.CompleteOnDevice(tp.AllGather(x.ptr<float>(), out.ptr<float>(), x.numel(), DType::kF32)));
  return out;
}

// [rows, cols] partial sums -> this rank's rows [rows / tp, cols] of the sum.
absl::StatusOr<Tensor> ReduceScatterRows(Arena& arena, Communicator& tp, const Tensor& x) {
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{x.dim(0) / tp.size(), x.dim(1)});
  TESSERA_RETURN_IF_ERROR(tp.CompleteOnDevice(tp.ReduceScatter(
      x.ptr<float>(), out.ptr<float>(), out.numel(), DType::kF32, ReduceOp::kSum)));
  return out;
}

}  // namespace

ParameterStore::Id RegisterSplitParameter(ParameterStore& store, const Communicator& tp,
                                          const std::string& name, const Shape& global_shape,
                                          int split_dim, ParamInit init, bool weight_decay) {
  ParallelSpec spec;
  spec.kind = ParallelSpec::Kind::kSplit;
  spec.split_dim = split_dim;
  // This rank's piece: block tp.rank() of tp.size() along split_dim. Its
  // initial values are the same elements of the single-rank parameter.
  Shape local_shape = global_shape;
  local_shape[split_dim] = global_shape[split_dim] / tp.size();
  std::vector<int64_t> offset(global_shape.rank(), 0);
  offset[split_dim] = tp.rank() * local_shape[split_dim];
  return store.RegisterPiece(name, global_shape, local_shape, std::move(offset), init,
                             weight_decay, spec);
}

// ---------------------------------------------------------------------------
// ColumnParallelLinear

absl::StatusOr<std::unique_ptr<ColumnParallelLinear>> ColumnParallelLinear::Create(
    ParameterStore& store, Communicator& tp, const std::string& name, int64_t in_features,
    int64_t out_features, const Options& options) {
  if (in_features < 1 || out_features < 1) {
    return UsageError(absl::StrCat(name, ": column-parallel linear needs positive sizes, got in ",
                                   in_features, ", out ", out_features));
  }
  const int64_t blocks = options.out_blocks;
  if (blocks < 1 || out_features % blocks != 0 || (blocks > 1 && options.gather_output)) {
    return UsageError(absl::StrCat(name, ": out_blocks ", blocks, " must divide out_features ",
                                   out_features, " and excludes gather_output"));
  }
  TESSERA_RETURN_IF_ERROR(CheckDivisible(
      absl::StrCat(name, ": out_features", blocks == 1 ? "" : " per block",
                   " of a column-parallel linear"),
      out_features / blocks, tp));
  auto layer = std::unique_ptr<ColumnParallelLinear>(
      new ColumnParallelLinear(store, tp, in_features, out_features, options));
  const ParamInit weight_init =
      options.weight_init.value_or(ParamInit::XavierUniform(in_features, out_features));
  // One block: W [out, in] split along dim 0. Several: [blocks, out/blocks,
  // in] split along dim 1; either way the local piece, read as a matrix, is
  // this rank's [out/tp, in] rows in output order.
  const Shape weight_shape = blocks == 1 ? Shape{out_features, in_features}
                                         : Shape{blocks, out_features / blocks, in_features};
  const int split_dim = blocks == 1 ? 0 : 1;
  layer->weight_ = RegisterSplitParameter(store, tp, name + ".weight", weight_shape, split_dim,
                                          weight_init, options.weight_decay);
  if (options.bias) {
    const Shape bias_shape =
        blocks == 1 ? Shape{out_features} : Shape{blocks, out_features / blocks};
    layer->bias_ = RegisterSplitParameter(store, tp, name + ".bias", bias_shape, split_dim,
                                          options.bias_init, /*weight_decay=*/false);
  }
  return layer;
}

ColumnParallelLinear::ColumnParallelLinear(ParameterStore& store, Communicator& tp, int64_t in,
                                           int64_t out, const Options& options)
    : store_(store), tp_(tp), in_(in), out_(out), out_local_(out / tp.size()), options_(options) {}

absl::StatusOr<Tensor> ColumnParallelLinear::Forward(Arena& arena, const Tensor& x) {
  TESSERA_RETURN_IF_ERROR(CheckMatrix("column-parallel linear input", x, in_));
  Tensor x_full = x;  // [rows, in]
  if (options_.sequence_parallel) {
    TESSERA_ASSIGN_OR_RETURN(x_full, AllGatherRows(arena, tp_, x));
  }
  const int64_t rows = x_full.dim(0);
  Backend& backend = arena.backend();
  Tensor y = arena.AllocateUninitialized(DType::kF32, Shape{rows, out_local_});  // [rows, out/tp]
  LinearForward(backend, x_full, store_.param(weight_).ptr<float>(),
                bias_ >= 0 ? store_.param(bias_).ptr<float>() : nullptr, y);
  saved_x_ = x_full;
  if (!options_.gather_output) return y;

  // The all-gather stacks the ranks' [rows, out/tp] blocks; interleave them
  // into the columns of [rows, out].
  Tensor blocks = arena.AllocateUninitialized(DType::kF32, Shape{tp_.size(), rows, out_local_});
  TESSERA_RETURN_IF_ERROR(tp_.CompleteOnDevice(
      tp_.AllGather(y.ptr<float>(), blocks.ptr<float>(), y.numel(), DType::kF32)));
  Tensor full = arena.AllocateUninitialized(DType::kF32, Shape{rows, out_});  // [rows, out]
  const size_t block_row = out_local_ * sizeof(float);
  for (int p = 0; p < tp_.size(); ++p) {
    backend.Copy2D(full.ptr<float>() + p * out_local_, out_ * sizeof(float),
                   blocks.ptr<float>() + p * rows * out_local_, block_row, block_row, rows);
  }
  return full;
}

absl::StatusOr<Tensor> ColumnParallelLinear::Backward(Arena& arena, const Tensor& dy,
                                                      bool need_dx) {
  if (!saved_x_.defined()) {
    return absl::FailedPreconditionError("column-parallel linear: Backward without Forward");
  }
  const int64_t rows = saved_x_.dim(0);
  TESSERA_RETURN_IF_ERROR(
      CheckMatrix("column-parallel linear dy", dy, options_.gather_output ? out_ : out_local_));
  if (dy.dim(0) != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("column-parallel linear: dy has ", dy.dim(0), " rows, forward had ", rows));
  }
  Backend& backend = arena.backend();
  Tensor dy_local = dy;  // [rows, out/tp]
  if (options_.gather_output) {
    // Backward of the all-gather: this rank's columns.
    dy_local = arena.AllocateUninitialized(DType::kF32, Shape{rows, out_local_});
    const size_t block_row = out_local_ * sizeof(float);
    backend.Copy2D(dy_local.ptr<float>(), block_row, dy.ptr<float>() + tp_.rank() * out_local_,
                   out_ * sizeof(float), block_row, rows);
  }
  // dW[out/tp, in] += dy_local^T x; dx = dy_local W_local
  Tensor dx;
  if (need_dx) dx = arena.AllocateUninitialized(DType::kF32, Shape{rows, in_});  // [rows, in]
  LinearBackward(backend, dy_local, saved_x_, store_.param(weight_).ptr<float>(),
                 store_.grad(weight_).ptr<float>(),
                 bias_ >= 0 ? store_.grad(bias_).ptr<float>() : nullptr, dx);
  if (need_dx) {
    // Each rank holds the contribution of its output columns: sum them.
    if (options_.sequence_parallel) {
      TESSERA_ASSIGN_OR_RETURN(dx, ReduceScatterRows(arena, tp_, dx));
    } else {
      TESSERA_RETURN_IF_ERROR(tp_.CompleteOnDevice(
          tp_.AllReduce(dx.ptr<float>(), dx.numel(), DType::kF32, ReduceOp::kSum)));
    }
  }
  saved_x_ = Tensor();
  return dx;
}

// ---------------------------------------------------------------------------
// RowParallelLinear

absl::StatusOr<std::unique_ptr<RowParallelLinear>> RowParallelLinear::Create(
    ParameterStore& store, Communicator& tp, const std::string& name, int64_t in_features,
    int64_t out_features, const Options& options) {
  if (in_features < 1 || out_features < 1) {
    return UsageError(absl::StrCat(name, ": row-parallel linear needs positive sizes, got in ",
                                   in_features, ", out ", out_features));
  }
  if (options.gather_output) {
    return UsageError(absl::StrCat(name,
                                   ": gather_output applies to column-parallel layers "
                                   "only (a row-parallel output is already whole)"));
  }
  TESSERA_RETURN_IF_ERROR(CheckDivisible(
      absl::StrCat(name, ": in_features of a row-parallel linear"), in_features, tp));
  auto layer = std::unique_ptr<RowParallelLinear>(
      new RowParallelLinear(store, tp, in_features, out_features, options));
  const ParamInit weight_init =
      options.weight_init.value_or(ParamInit::XavierUniform(in_features, out_features));
  layer->weight_ =
      RegisterSplitParameter(store, tp, name + ".weight", Shape{out_features, in_features},
                             /*split_dim=*/1, weight_init, options.weight_decay);
  if (options.bias) {
    layer->bias_ = store.Register(name + ".bias", Shape{out_features}, options.bias_init,
                                  /*weight_decay=*/false, ParallelSpec::Replicated());
  }
  return layer;
}

RowParallelLinear::RowParallelLinear(ParameterStore& store, Communicator& tp, int64_t in,
                                     int64_t out, const Options& options)
    : store_(store), tp_(tp), in_(in), in_local_(in / tp.size()), out_(out), options_(options) {}

absl::StatusOr<Tensor> RowParallelLinear::Forward(Arena& arena, const Tensor& x) {
  TESSERA_RETURN_IF_ERROR(CheckMatrix("row-parallel linear input", x, in_local_));
  const int64_t rows = x.dim(0);
  if (options_.sequence_parallel) {
    TESSERA_RETURN_IF_ERROR(
        CheckDivisible("row-parallel linear with sequence parallelism: rows (tokens)", rows, tp_));
  }
  // Partial sums over this rank's input columns.
  Backend& backend = arena.backend();
  Tensor partial = arena.AllocateUninitialized(DType::kF32, Shape{rows, out_});  // [rows, out]
  LinearForward(backend, x, store_.param(weight_).ptr<float>(), /*bias=*/nullptr, partial);
  Tensor y = partial;
  if (options_.sequence_parallel) {
    TESSERA_ASSIGN_OR_RETURN(y, ReduceScatterRows(arena, tp_, partial));  // [rows/tp, out]
  } else {
    TESSERA_RETURN_IF_ERROR(tp_.CompleteOnDevice(
        tp_.AllReduce(y.ptr<float>(), y.numel(), DType::kF32, ReduceOp::kSum)));
  }
  // After the reduction, so the replicated bias counts once.
  if (bias_ >= 0) {
    backend.AddBiasRows(y.ptr<float>(), store_.param(bias_).ptr<float>(), y.dim(0), out_);
  }
  saved_x_ = x;
  return y;
}

absl::StatusOr<Tensor> RowParallelLinear::Backward(Arena& arena, const Tensor& dy, bool need_dx) {
  if (!saved_x_.defined()) {
    return absl::FailedPreconditionError("row-parallel linear: Backward without Forward");
  }
  const int64_t rows = saved_x_.dim(0);
  const int64_t dy_rows = options_.sequence_parallel ? rows / tp_.size() : rows;
  TESSERA_RETURN_IF_ERROR(CheckMatrix("row-parallel linear dy", dy, out_));
  if (dy.dim(0) != dy_rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("row-parallel linear: dy has ", dy.dim(0), " rows, expected ", dy_rows));
  }
  Tensor dy_full = dy;  // [rows, out]
  if (options_.sequence_parallel) {
    TESSERA_ASSIGN_OR_RETURN(dy_full, AllGatherRows(arena, tp_, dy));
  }
  // dW[out, in/tp] += dy^T x_local; dx = dy W_local. Summed over the
  // gathered rows, db is already the whole-batch gradient on every rank
  // (Megatron instead all-reduces it over tp later).
  Tensor dx;
  if (need_dx) dx = arena.AllocateUninitialized(DType::kF32, Shape{rows, in_local_});
  LinearBackward(arena.backend(), dy_full, saved_x_, store_.param(weight_).ptr<float>(),
                 store_.grad(weight_).ptr<float>(),
                 bias_ >= 0 ? store_.grad(bias_).ptr<float>() : nullptr, dx);
  saved_x_ = Tensor();
  return dx;
}

}  // namespace tessera::parallel
