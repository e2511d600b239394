#include "parallel/sequence_parallel/jagged_ulysses.h"

#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::parallel {

TokenRange SequenceShard(int64_t total, int rank, int ranks) {
  return {total * rank / ranks, total * (rank + 1) / ranks};
}

JaggedUlysses::JaggedUlysses(Communicator& sp, int64_t total) : sp_(&sp), total_(total) {
  for (int r = 0; r < sp.size(); ++r) ranges_.push_back(SequenceShard(total, r, sp.size()));
}

int64_t JaggedUlysses::PartWidth(std::span<const ColumnBlock> blocks) const {
  int64_t width = 0;
  for (const ColumnBlock& block : blocks) {
    TESSERA_CHECK(block.width % sp_->size() == 0 && block.stride >= block.width);
    width += block.width / sp_->size();
  }
  return width;
}

absl::StatusOr<Tensor> JaggedUlysses::ToHeads(Arena& arena,
                                              std::span<const ColumnBlock> blocks) const {
  const int sp = sp_->size();
  const int64_t rows = mine().size(), part = PartWidth(blocks);
  Backend& backend = arena.backend();
  // send [sp, rows, part]: block p = our tokens, rank p's part of each block.
  Tensor send = arena.AllocateUninitialized(DType::kF32, Shape{sp, rows, part});
  for (int p = 0; p < sp; ++p) {
    int64_t column = 0;
    for (const ColumnBlock& block : blocks) {
      const int64_t cols = block.width / sp;
      if (rows > 0) {
        backend.Copy2D(send.ptr<float>() + p * rows * part + column, part * sizeof(float),
                       block.data + p * cols, block.stride * sizeof(float), cols * sizeof(float),
                       rows);
      }
      column += cols;
    }
  }
  Tensor whole = arena.AllocateUninitialized(DType::kF32, Shape{total_, part});
  std::vector<size_t> send_counts(sp, static_cast<size_t>(rows * part)), recv_counts(sp);
  for (int p = 0; p < sp; ++p) recv_counts[p] = static_cast<size_t>(ranges_[p].size() * part);
  TESSERA_RETURN_IF_ERROR(sp_->CompleteOnDevice(sp_->AllToAllV(
      send.ptr<float>(), send_counts, whole.ptr<float>(), recv_counts, DType::kF32)));
  return whole;
}

absl::Status JaggedUlysses::ToTokens(Arena& arena, const Tensor& whole,
                                     std::span<const ColumnBlock> blocks) const {
  const int sp = sp_->size();
  const int64_t rows = mine().size(), part = PartWidth(blocks);
  TESSERA_CHECK(whole.rank() == 2 && whole.dim(0) == total_ && whole.dim(1) == part);
  Backend& backend = arena.backend();
  // Rank p's tokens are rows [begin_p, end_p) of `whole`: contiguous blocks.
  std::vector<size_t> send_counts(sp), recv_counts(sp, static_cast<size_t>(rows * part));
  for (int p = 0; p < sp; ++p) send_counts[p] = static_cast<size_t>(ranges_[p].size() * part);
  Tensor recv = arena.AllocateUninitialized(DType::kF32, Shape{sp, rows, part});
  TESSERA_RETURN_IF_ERROR(sp_->CompleteOnDevice(sp_->AllToAllV(
      whole.ptr<float>(), send_counts, recv.ptr<float>(), recv_counts, DType::kF32)));
  for (int p = 0; p < sp; ++p) {
    int64_t column = 0;
    for (const ColumnBlock& block : blocks) {
      const int64_t cols = block.width / sp;
      if (rows > 0) {
        backend.Copy2D(block.data + p * cols, block.stride * sizeof(float),
                       recv.ptr<float>() + p * rows * part + column, part * sizeof(float),
                       cols * sizeof(float), rows);
      }
      column += cols;
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera::parallel
