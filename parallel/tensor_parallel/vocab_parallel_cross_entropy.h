// Cross-entropy over a vocabulary split over the tp ranks (Megatron's
// vocab_parallel_cross_entropy): rank r holds the logits [rows, V/tp] of
// vocabulary entries [vocab_begin, vocab_begin + V/tp). Each row's maximum,
// sum of exponentials and target logit are combined over tp from per-rank
// statistics (3 numbers a row), so the logits are never gathered:
//
//   M = max_r m_r,  S = sum_r s_r exp(m_r - M),  loss = log S + M - x_target
//
// with m_r, s_r the rank's row maximum and sum of exp(x - m_r). Backward:
// dlogits = scale * (softmax - onehot(target)) on this rank's columns.
// Each rank also sends its row argmax, so the argmax over the whole
// vocabulary (the first rank in order whose maximum is M) comes for free.
//
// Every rank of `tp` calls Forward (one all-gather of the statistics, in
// rank order, so every rank gets the same bits) with the same rows. Every
// step runs where the logits live, through the backend's VocabCrossEntropy*
// ops: the statistics are gathered over tp's device communicator, and the
// loss sum and the count of argmax hits (two doubles) are left in device
// memory (ForwardTotals, a training step's) or copied to the host (Forward,
// the evaluation's and the tests'). Targets outside [0, V) are a programmer error (the data reader
// checks them).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "runtime/tensor/arena.h"
#include "runtime/tensor/tensor.h"

namespace tessera::parallel {

class VocabParallelCrossEntropy {
 public:
  // `tp` must outlive this; this rank's vocabulary starts at vocab_begin.
  VocabParallelCrossEntropy(Communicator& tp, int64_t vocab_begin)
      : tp_(&tp), vocab_begin_(vocab_begin) {}

  // logits [rows, V/tp]; targets: rows global vocabulary ids (host). Returns
  // the sum over rows of -log p(target) (the same on every rank) and keeps
  // this rank's softmax columns for Backward. With `correct`, sets it to the
  // rows whose argmax over the whole vocabulary (the first maximum, as one
  // process would find it) is the target.
  absl::StatusOr<double> Forward(const Tensor& logits, const std::vector<int32_t>& targets,
                                 int64_t* correct = nullptr);
  // The same, its buffers (the softmax columns kept for Backward, the
  // targets, the statistics) taken from `arena` instead of fresh zeroed
  // allocations: the arena must keep them until Backward.
  absl::StatusOr<double> Forward(Arena& arena, const Tensor& logits,
                                 const std::vector<int32_t>& targets, int64_t* correct = nullptr);
  // The same without a host read: returns the totals in the logits' memory,
  // an i64 tensor [2] holding two doubles: the loss sum and the argmax hits.
  absl::StatusOr<Tensor> ForwardTotals(Arena& arena, const Tensor& logits,
                                       const std::vector<int32_t>& targets);
  // dlogits [rows, V/tp] = scale * (softmax - onehot(target)), overwritten.
  void Backward(const Tensor& dlogits, float scale) const;

 private:
  // Buffers of `dtype` and `shape` in the logits' memory.
  using Allocator = std::function<Tensor(DType dtype, Shape shape)>;
  // The totals of ForwardTotals.
  absl::StatusOr<Tensor> Run(const Allocator& allocate, const Tensor& logits,
                             const std::vector<int32_t>& targets);
  // The loss sum and, with `correct`, the hits, read from `totals`.
  static double Read(const Tensor& totals, int64_t* correct);

  Communicator* tp_;
  int64_t vocab_begin_;
  // In the logits' memory: [rows, V/tp] the global softmax's columns of this
  // rank, and the rows' global target ids.
  Tensor probs_, targets_;
};

}  // namespace tessera::parallel
