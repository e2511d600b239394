// Vocab-parallel cross-entropy over the world as the tp group (np 1, 2, 4):
// each rank holds a block of the vocabulary's logits; the loss and each
// rank's dlogits must equal the cross-entropy of the gathered logits,
// computed in double on every rank (and the single-process kernel's loss);
// the count of rows whose argmax is the target equals the gathered logits'
// (first maximum on ties, also when the tied entries lie on different ranks).
#include "parallel/tensor_parallel/vocab_parallel_cross_entropy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "runtime/base/status.h"
#include "runtime/kernels/cpu/loss.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera::parallel {
namespace {

using testing::MpiForTests;

// Logits of rows whose largest entries lie on different ranks, some far
// from zero (a log-sum-exp that would overflow without the maximum).
std::vector<float> FullLogits(int64_t rows, int64_t vocab) {
  std::vector<float> logits(rows * vocab);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t v = 0; v < vocab; ++v) {
      logits[r * vocab + v] = static_cast<float>(3 * std::sin(0.7 * r + 1.3 * v));
    }
    logits[r * vocab + (5 * r) % vocab] += 90.0f * (r % 2);
  }
  return logits;
}

TEST(VocabParallelCrossEntropy, LossAndGradientsEqualTheGatheredLogits) {
  auto world_or = MpiForTests()->CreateWorld(absl::Seconds(30));
  ASSERT_TRUE(world_or.ok());
  Communicator& tp = **world_or;
  const int64_t rows = 7, vocab = 12, local = vocab / tp.size(), begin = tp.rank() * local;
  const std::vector<float> full = FullLogits(rows, vocab);
  std::vector<int32_t> targets;
  for (int64_t r = 0; r < rows; ++r) targets.push_back(static_cast<int32_t>((3 * r + 1) % vocab));

  // The reference in double over the whole vocabulary.
  double want_loss = 0;
  std::vector<double> want_d(rows * vocab);
  const float scale = 0.25f;
  for (int64_t r = 0; r < rows; ++r) {
    double max = full[r * vocab];
    for (int64_t v = 0; v < vocab; ++v) max = std::max(max, double(full[r * vocab + v]));
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(full[r * vocab + v] - max);
    want_loss += std::log(sum) + max - full[r * vocab + targets[r]];
    for (int64_t v = 0; v < vocab; ++v) {
      want_d[r * vocab + v] =
          scale * (std::exp(full[r * vocab + v] - max) / sum - (v == targets[r] ? 1 : 0));
    }
  }

  Tensor logits = Tensor::Empty(DType::kF32, Shape{rows, local});
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < local; ++j) logits.data<float>()[r * local + j] = full[r * vocab + begin + j];
  }
  VocabParallelCrossEntropy loss(tp, begin);
  absl::StatusOr<double> got = loss.Forward(logits, targets);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_NEAR(*got, want_loss, 1e-9 * std::abs(want_loss));
  // The single-process kernel on the gathered logits (float log-sum-exp).
  std::vector<float> probs(rows * vocab);
  const double kernel = rows * cpu::CrossEntropyForward(full.data(), targets.data(), probs.data(),
                                                        rows, vocab);
  EXPECT_NEAR(*got, kernel, 1e-5 * std::abs(kernel));

  Tensor dlogits = Tensor::Empty(DType::kF32, Shape{rows, local});
  loss.Backward(dlogits, scale);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < local; ++j) {
      EXPECT_NEAR(dlogits.data<float>()[r * local + j], want_d[r * vocab + begin + j], 1e-7)
          << "row " << r << ", vocabulary entry " << begin + j;
    }
  }
}

// Rows with the maximum at the target, elsewhere, and tied between entries
// 0 and 11 (on the first and the last rank): only the first counts.
TEST(VocabParallelCrossEntropy, CountsRowsWhoseArgmaxIsTheTarget) {
  auto world_or = MpiForTests()->CreateWorld(absl::Seconds(30));
  ASSERT_TRUE(world_or.ok());
  Communicator& tp = **world_or;
  const int64_t rows = 9, vocab = 12, local = vocab / tp.size(), begin = tp.rank() * local;
  std::vector<float> full(rows * vocab);
  std::vector<int32_t> targets(rows);
  int64_t want = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t v = 0; v < vocab; ++v) full[r * vocab + v] = static_cast<float>(std::cos(r + 2.1 * v));
    const int64_t peak = (7 * r + 2) % vocab;
    full[r * vocab + peak] = 5.0f;
    targets[r] = static_cast<int32_t>(r % 3 == 0 ? (peak + 1) % vocab : peak);
    if (r == 4 || r == 5) {  // a tie between entries 0 and 11
      full[r * vocab + 0] = full[r * vocab + 11] = 9.0f;
      targets[r] = r == 4 ? 0 : 11;
    }
    int64_t argmax = 0;
    for (int64_t v = 1; v < vocab; ++v) {
      if (full[r * vocab + v] > full[r * vocab + argmax]) argmax = v;
    }
    want += argmax == targets[r];
  }
  ASSERT_EQ(want, 5);  // rows 1, 2, 4, 7, 8
  Tensor logits = Tensor::Empty(DType::kF32, Shape{rows, local});
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < local; ++j) logits.data<float>()[r * local + j] = full[r * vocab + begin + j];
  }
  VocabParallelCrossEntropy loss(tp, begin);
  int64_t correct = -1;
  ASSERT_TRUE(loss.Forward(logits, targets, &correct).ok());
  EXPECT_EQ(correct, want);
}

}  // namespace
}  // namespace tessera::parallel
