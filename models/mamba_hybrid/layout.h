// How one rank holds the Mamba hybrid's parameters and tokens, and the
// tensor-parallel pieces its layers share (docs/mamba.md, "Parallel layouts").
//
// Tokens: every rank holds, for each of the B samples of its micro-batch,
// a contiguous chunk of the sample's T positions (rows sample-major):
//   sequence parallelism (sp):  chunk sp_rank of T/sp positions
//   + Megatron SP (along tp):   chunk tp_rank of those, T/(sp*tp) positions
// Without Megatron SP the tp ranks of a replica hold the same rows.
//
// Inside a layer ("the tp region") each tp rank computes its heads, groups
// or columns over all of the sp chunk's rows in sample order: EnterTpRegion
// gathers the rows (Megatron SP) and its backward sums dx over tp;
// ExitTpRegion sums the row-parallel partial outputs over tp (all-reduce, or
// reduce-scatter to this rank's rows under Megatron SP).
//
// On one process tp and sp are groups of one (SingleRankCommunicator): the
// same code, every collective the identity.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/single_rank_communicator.h"
#include "runtime/nn/parameter.h"
#include "runtime/tensor/arena.h"

namespace tessera::mamba_hybrid {

struct HybridLayout {
  parallel::Communicator* tp = nullptr;  // never null once built
  parallel::Communicator* sp = nullptr;  // never null once built
  bool megatron_sp = false;              // only with tp > 1
  // The MoE layers' groups: experts split over ep (never null once built);
  // the balance loss over one replica's tokens (tp x sp; null: ep's, one
  // process); GLOBAL_BATCH balance counts summed over dp (null: one replica).
  parallel::Communicator* ep = nullptr;
  parallel::Communicator* tp_sp = nullptr;
  parallel::Communicator* dp = nullptr;

  int tp_size() const { return tp->size(); }
  int tp_rank() const { return tp->rank(); }
  int sp_size() const { return sp->size(); }
  int sp_rank() const { return sp->rank(); }
  // Tensor-parallel pieces run over rows the tp ranks share or gather.
  bool rows_split_over_tp() const { return megatron_sp && tp_size() > 1; }
};

// One process: tp, sp and ep are groups of one rank.
class SingleProcessLayout {
 public:
  explicit SingleProcessLayout(Backend& backend = HostBackend())
      : tp_(backend, "tp"), sp_(backend, "sp"), ep_(backend, "ep") {
    layout_.tp = &tp_;
    layout_.sp = &sp_;
    layout_.ep = &ep_;
  }
  SingleProcessLayout(const SingleProcessLayout&) = delete;
  SingleProcessLayout& operator=(const SingleProcessLayout&) = delete;
  const HybridLayout& layout() const { return layout_; }

 private:
  parallel::SingleRankCommunicator tp_, sp_, ep_;
  HybridLayout layout_;
};

// Registers this rank's piece of a parameter split into tp equal parts along
// `split_dim` (ParallelSpec kSplit), or the whole parameter (replicated)
// when tp is 1. The caller has checked the divisibility (config rules).
ParameterStore::Id RegisterTpSplit(ParameterStore& store, const HybridLayout& layout,
                                   const std::string& name, Shape global_shape, int split_dim,
                                   ParamInit init, bool weight_decay);

// The spec of a parameter replicated over tp: a partial gradient on each tp
// rank (reduced over the world) when the layer runs on a tp shard of the
// rows (Megatron SP: the norms, the embedding's rows).
ParallelSpec TokenShardSpec(const HybridLayout& layout);

// The tp region around a layer; `batch` samples. x and dy are this rank's
// rows [rows_local, D]; inside the region the rows are the sp chunk's
// [batch * seq, D] in sample order.
absl::StatusOr<Tensor> EnterTpRegion(Arena& arena, const HybridLayout& layout, const Tensor& x,
                                     int64_t batch);
// dx (partial over tp, sample order) -> this rank's rows of the sum.
absl::StatusOr<Tensor> EnterTpRegionBackward(Arena& arena, const HybridLayout& layout,
                                             const Tensor& dx, int64_t batch);
// Partial output (sample order) -> this rank's rows of the sum over tp.
absl::StatusOr<Tensor> ExitTpRegion(Arena& arena, const HybridLayout& layout,
                                    const Tensor& partial, int64_t batch);
// dy (this rank's rows) -> the region's rows.
absl::StatusOr<Tensor> ExitTpRegionBackward(Arena& arena, const HybridLayout& layout,
                                            const Tensor& dy, int64_t batch);

// Row order: `chunks` chunks of every one of `batch` samples ([chunks,
// batch, seq] chunk-major, as a gather over the tp ranks stacks them) to
// [batch, chunks * seq] sample-major, or back. `seq` is one chunk's length.
Tensor ReorderChunks(Arena& arena, const Tensor& x, int64_t chunks, int64_t batch,
                     bool to_sample_major);
// Chunk `chunk` of `chunks` equal chunks of every one of `batch` samples of
// the sample-major rows x [batch * chunks * seq, F] -> [batch * seq, F].
Tensor TakeChunk(Arena& arena, const Tensor& x, int64_t chunk, int64_t chunks, int64_t batch);

// Megatron-LM's Mamba context parallelism: an activation whose columns are
// blocks of whole heads or groups (z, x, B, C, dt; or y), `widths` floats
// each, every block split into sp equal parts. SequenceToHeads: this rank's
// sequence shard of every one of `batch` samples, [batch * seq/sp, sum of
// widths] -> part sp_rank of every block at every position, [batch * seq,
// sum of widths / sp], blocks in order, by one all-to-all over sp.
// HeadsToSequence: the reverse (and the adjoint: each is the other's
// backward). A group of one returns x.
absl::StatusOr<Tensor> SequenceToHeads(Arena& arena, parallel::Communicator& sp, const Tensor& x,
                                       const std::vector<int64_t>& widths, int64_t batch);
absl::StatusOr<Tensor> HeadsToSequence(Arena& arena, parallel::Communicator& sp, const Tensor& x,
                                       const std::vector<int64_t>& widths, int64_t batch);

// A column-parallel projection whose output columns are several pieces (one
// parameter each, [rows_of_piece, in] on this rank), in order: y = x [W_0;
// W_1; ...]^T. Each piece is one tp-split parameter, so blocks of unequal
// widths (Mamba's z, x, B, C, dt) each split over tp.
struct ProjectionPiece {
  ParameterStore::Id id;
  int64_t rows;  // this rank's output columns from the piece
};
// x [rows, in] -> [rows, sum of pieces' rows].
Tensor ProjectForward(Arena& arena, const ParameterStore& store,
                      const std::vector<ProjectionPiece>& pieces, const Tensor& x);
// dW_i += dy_i^T x; returns dx = sum_i dy_i W_i [rows, in] (overwritten).
Tensor ProjectBackward(Arena& arena, ParameterStore& store,
                       const std::vector<ProjectionPiece>& pieces, const Tensor& dy,
                       const Tensor& x);

}  // namespace tessera::mamba_hybrid
