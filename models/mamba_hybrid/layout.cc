#include "models/mamba_hybrid/layout.h"

#include "runtime/base/status.h"

namespace tessera::mamba_hybrid {

using parallel::ReduceOp;

ParameterStore::Id RegisterTpSplit(ParameterStore& store, const HybridLayout& layout,
                                   const std::string& name, Shape global_shape, int split_dim,
                                   ParamInit init, bool weight_decay) {
  if (layout.tp_size() == 1) return store.Register(name, global_shape, init, weight_decay);
  ParallelSpec spec;
  spec.kind = ParallelSpec::Kind::kSplit;
  spec.split_dim = split_dim;
  Shape local_shape = global_shape;
  local_shape[split_dim] = global_shape[split_dim] / layout.tp_size();
  std::vector<int64_t> offset(global_shape.rank(), 0);
  offset[split_dim] = layout.tp_rank() * local_shape[split_dim];
  return store.RegisterPiece(name, global_shape, local_shape, std::move(offset), init,
                             weight_decay, spec);
}

ParallelSpec TokenShardSpec(const HybridLayout& layout) {
  return layout.rows_split_over_tp() ? ParallelSpec::TensorPartial() : ParallelSpec::Replicated();
}

Tensor ReorderChunks(Arena& arena, const Tensor& x, int64_t chunks, int64_t batch,
                     bool to_sample_major) {
  Tensor out = arena.AllocateUninitialized(DType::kF32, x.shape());
  const int64_t features = x.dim(1), seq = x.dim(0) / (chunks * batch);
  const size_t block_bytes = static_cast<size_t>(seq * features) * sizeof(float);
  const float* src = x.ptr<float>();
  float* dst = out.ptr<float>();
  for (int64_t c = 0; c < chunks; ++c) {
    // Chunk c of every sample: one block apart chunk-major, `chunks` blocks sample-major.
    const int64_t sample_major = c * seq * features, chunk_major = c * batch * seq * features;
    if (to_sample_major) {
      arena.backend().Copy2D(dst + sample_major, chunks * block_bytes, src + chunk_major,
                             block_bytes, block_bytes, batch);
    } else {
      arena.backend().Copy2D(dst + chunk_major, block_bytes, src + sample_major,
                             chunks * block_bytes, block_bytes, batch);
    }
  }
  return out;
}

Tensor TakeChunk(Arena& arena, const Tensor& x, int64_t chunk, int64_t chunks, int64_t batch) {
  const int64_t features = x.dim(1), seq = x.dim(0) / (chunks * batch);
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{batch * seq, features});
  const size_t block_bytes = static_cast<size_t>(seq * features) * sizeof(float);
  arena.backend().Copy2D(out.ptr<float>(), block_bytes, x.ptr<float>() + chunk * seq * features,
                         chunks * block_bytes, block_bytes, batch);
  return out;
}

namespace {

// Part `part` of every block of `wide` ([rows, sum of widths]) to the
// columns of `parts` ([rows, sum of widths / count]), or back (`to_wide`).
void CopyBlockParts(Backend& backend, const Tensor& wide, const std::vector<int64_t>& widths,
                    int64_t part, int64_t count, float* parts, bool to_wide) {
  const int64_t rows = wide.dim(0), wide_width = wide.dim(1), parts_width = wide_width / count;
  int64_t wide_column = 0, parts_column = 0;
  for (const int64_t width : widths) {
    const int64_t share = width / count;
    float* from_wide = wide.ptr<float>() + wide_column + part * share;
    const size_t wide_pitch = wide_width * sizeof(float), parts_pitch = parts_width * sizeof(float);
    const size_t bytes = share * sizeof(float);
    if (to_wide) {
      backend.Copy2D(from_wide, wide_pitch, parts + parts_column, parts_pitch, bytes, rows);
    } else {
      backend.Copy2D(parts + parts_column, parts_pitch, from_wide, wide_pitch, bytes, rows);
    }
    wide_column += width;
    parts_column += share;
  }
}

}  // namespace

absl::StatusOr<Tensor> SequenceToHeads(Arena& arena, parallel::Communicator& sp, const Tensor& x,
                                       const std::vector<int64_t>& widths, int64_t batch) {
  const int R = sp.size();
  if (R == 1) return x;
  const int64_t rows = x.dim(0), share = x.dim(1) / R;
  // Block r of the send buffer: our positions, part r of every block.
  Tensor send = arena.AllocateUninitialized(DType::kF32, Shape{R * rows, share});
  for (int r = 0; r < R; ++r) {
    CopyBlockParts(arena.backend(), x, widths, r, R, send.ptr<float>() + r * rows * share, false);
  }
  // Block r received: rank r's positions (shard r of every sample), our parts.
  Tensor received = arena.AllocateUninitialized(DType::kF32, send.shape());
  TESSERA_RETURN_IF_ERROR(sp.CompleteOnDevice(sp.AllToAll(
      send.ptr<float>(), received.ptr<float>(), rows * share, DType::kF32)));
  return ReorderChunks(arena, received, R, batch, /*to_sample_major=*/true);
}

absl::StatusOr<Tensor> HeadsToSequence(Arena& arena, parallel::Communicator& sp, const Tensor& x,
                                       const std::vector<int64_t>& widths, int64_t batch) {
  const int R = sp.size();
  if (R == 1) return x;
  const int64_t rows = x.dim(0) / R, share = x.dim(1);
  // Block r of the send buffer: shard r of every sample, our parts.
  const Tensor send = ReorderChunks(arena, x, R, batch, /*to_sample_major=*/false);
  Tensor received = arena.AllocateUninitialized(DType::kF32, send.shape());
  TESSERA_RETURN_IF_ERROR(sp.CompleteOnDevice(sp.AllToAll(
      send.ptr<float>(), received.ptr<float>(), rows * share, DType::kF32)));
  // Block r received: our positions, rank r's part of every block.
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{rows, R * share});
  for (int r = 0; r < R; ++r) {
    CopyBlockParts(arena.backend(), out, widths, r, R, received.ptr<float>() + r * rows * share,
                   true);
  }
  return out;
}

absl::StatusOr<Tensor> EnterTpRegion(Arena& arena, const HybridLayout& layout, const Tensor& x,
                                     int64_t batch) {
  if (!layout.rows_split_over_tp()) return x;
  parallel::Communicator& tp = *layout.tp;
  Tensor all = arena.AllocateUninitialized(DType::kF32, Shape{tp.size() * x.dim(0), x.dim(1)});
  TESSERA_RETURN_IF_ERROR(
      tp.CompleteOnDevice(tp.AllGather(x.ptr<float>(), all.ptr<float>(), x.numel(), DType::kF32)));
  return ReorderChunks(arena, all, tp.size(), batch, /*to_sample_major=*/true);
}

absl::StatusOr<Tensor> ExitTpRegion(Arena& arena, const HybridLayout& layout,
                                    const Tensor& partial, int64_t batch) {
  parallel::Communicator& tp = *layout.tp;
  if (!layout.rows_split_over_tp()) {
    TESSERA_RETURN_IF_ERROR(tp.CompleteOnDevice(
        tp.AllReduce(partial.ptr<float>(), partial.numel(), DType::kF32, ReduceOp::kSum)));
    return partial;
  }
  const Tensor chunk_major = ReorderChunks(arena, partial, tp.size(), batch, false);
  Tensor mine =
      arena.AllocateUninitialized(DType::kF32, Shape{partial.dim(0) / tp.size(), partial.dim(1)});
  TESSERA_RETURN_IF_ERROR(tp.CompleteOnDevice(tp.ReduceScatter(
      chunk_major.ptr<float>(), mine.ptr<float>(), mine.numel(), DType::kF32, ReduceOp::kSum)));
  return mine;
}

absl::StatusOr<Tensor> EnterTpRegionBackward(Arena& arena, const HybridLayout& layout,
                                             const Tensor& dx, int64_t batch) {
  return ExitTpRegion(arena, layout, dx, batch);  // the adjoint of a gather is a sum
}

absl::StatusOr<Tensor> ExitTpRegionBackward(Arena& arena, const HybridLayout& layout,
                                            const Tensor& dy, int64_t batch) {
  return EnterTpRegion(arena, layout, dy, batch);  // the adjoint of a sum is a copy
}

Tensor ProjectForward(Arena& arena, const ParameterStore& store,
                      const std::vector<ProjectionPiece>& pieces, const Tensor& x) {
  const int64_t rows = x.dim(0), in = x.dim(1);
  int64_t width = 0;
  for (const ProjectionPiece& piece : pieces) width += piece.rows;
  Tensor y = arena.AllocateUninitialized(DType::kF32, Shape{rows, width});  // [rows, width]
  int64_t column = 0;
  for (const ProjectionPiece& piece : pieces) {
    arena.backend().Gemm(false, true, rows, piece.rows, in, 1.0f, x.ptr<float>(), in,
                         store.param(piece.id).ptr<float>(), in, 0.0f, y.ptr<float>() + column,
                         width);
    column += piece.rows;
  }
  return y;
}

Tensor ProjectBackward(Arena& arena, ParameterStore& store,
                       const std::vector<ProjectionPiece>& pieces, const Tensor& dy,
                       const Tensor& x) {
  const int64_t rows = x.dim(0), in = x.dim(1), width = dy.dim(1);
  Tensor dx = arena.AllocateUninitialized(DType::kF32, Shape{rows, in});  // [rows, in]
  Backend& backend = arena.backend();
  int64_t column = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const ProjectionPiece& piece = pieces[i];
    const float* dy_piece = dy.ptr<float>() + column;
    backend.Gemm(true, false, piece.rows, in, rows, 1.0f, dy_piece, width, x.ptr<float>(), in,
                 1.0f, store.grad(piece.id).ptr<float>(), in);
    backend.Gemm(false, false, rows, in, piece.rows, 1.0f, dy_piece, width,
                 store.param(piece.id).ptr<float>(), in, i == 0 ? 0.0f : 1.0f, dx.ptr<float>(),
                 in);
    column += piece.rows;
  }
  return dx;
}

}  // namespace tessera::mamba_hybrid
