// Ulysses sequence parallelism over a jagged token stream (HSTU's batches:
// users' histories of any length concatenated, nothing padded).
//
// The T tokens of a batch are split over the sp group in contiguous ranges,
// rank r holding [r T / sp, (r + 1) T / sp): an equal share (to one token)
// whatever the users' lengths, and a user may straddle ranks. Everything
// that works row by row (norms, projections, the loss, the table lookups)
// runs on a rank's own range. Attention needs whole users, so around it an
// all-to-all trades the token range for a head range:
//
//   before:  this rank's tokens, every head's columns
//   ToHeads  (rank p receives every rank's tokens of heads [p H/sp, (p+1) H/sp))
//   kernel:  all T tokens, this rank's heads: whole users
//   ToTokens (the way back: rank p receives its tokens of every head)
//
// Ranges are in rank order, so the blocks received from ranks 0..sp-1 are
// the batch's tokens in order: no reordering after ToHeads, and ToTokens
// sends contiguous row blocks. Each head's attention is computed whole on one
// rank, so the result equals one process's exactly (the kernels see the same
// rows in the same order).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "runtime/tensor/arena.h"

namespace tessera::parallel {

// Tokens [begin, end) of a batch.
struct TokenRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// Rank `rank`'s share of `total` tokens over `ranks` ranks (see above).
TokenRange SequenceShard(int64_t total, int rank, int ranks);

// Columns of a matrix in memory: `width` floats of each row, rows `stride`
// floats apart. The exchange splits `width` into sp equal parts, part p
// belonging to rank p (the heads of rank p when the columns are heads-major).
struct ColumnBlock {
  float* data = nullptr;
  int64_t stride = 0;
  int64_t width = 0;
};

class JaggedUlysses {
 public:
  // For a batch of `total` tokens. `sp` must outlive this.
  JaggedUlysses(Communicator& sp, int64_t total);

  const TokenRange& mine() const { return ranges_[sp_->rank()]; }
  int64_t total() const { return total_; }

  // `blocks`: this rank's tokens ([mine().size()] rows each), every width a
  // multiple of sp. Returns [total, sum(width / sp)]: every token, this
  // rank's part of each block, the blocks side by side in the order given.
  // Collective over sp.
  absl::StatusOr<Tensor> ToHeads(Arena& arena, std::span<const ColumnBlock> blocks) const;
  // The inverse: `whole` [total, sum(width / sp)] as ToHeads returns it;
  // this rank's tokens of every rank's part are written into `blocks`
  // (their other columns are left alone). Collective over sp.
  absl::Status ToTokens(Arena& arena, const Tensor& whole,
                        std::span<const ColumnBlock> blocks) const;

 private:
  // Sum over the blocks of width / sp, checking each divides.
  int64_t PartWidth(std::span<const ColumnBlock> blocks) const;

  Communicator* sp_;
  int64_t total_;
  std::vector<TokenRange> ranges_;  // of every rank
};

}  // namespace tessera::parallel
