#include "parallel/tensor_parallel/vocab_parallel_cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "runtime/base/status.h"
#include "runtime/tensor/host_access.h"

namespace tessera::parallel {
namespace {

struct RowStats {
  double max, sum_exp, target;  // over this rank's columns; target 0 unless it owns it
  double argmax;                // the global id of the row's first maximum on this rank
};

}  // namespace

absl::StatusOr<double> VocabParallelCrossEntropy::Forward(const Tensor& logits,
                                                          const std::vector<int32_t>& targets,
                                                          int64_t* correct) {
  const int64_t rows = logits.dim(0), columns = logits.dim(1);
  TESSERA_CHECK(static_cast<int64_t>(targets.size()) == rows);
  const Tensor host = HostReadable(logits);
  const float* x = host.data<float>();
  std::vector<RowStats> mine(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * columns;
    double max = -std::numeric_limits<double>::infinity(), sum = 0;
    int64_t argmax = 0;
    for (int64_t j = 0; j < columns; ++j) {
      if (static_cast<double>(row[j]) > max) {
        max = row[j];
        argmax = j;
      }
    }
    for (int64_t j = 0; j < columns; ++j) sum += std::exp(static_cast<double>(row[j]) - max);
    const int64_t local = targets[r] - vocab_begin_;
    mine[r] = {max, sum, local >= 0 && local < columns ? static_cast<double>(row[local]) : 0.0,
               static_cast<double>(vocab_begin_ + argmax)};
  }
  const int ranks = tp_->size();
  std::vector<RowStats> all(static_cast<size_t>(rows) * ranks);
  Communicator& tp = tp_->host();  // per-row statistics on the host
  TESSERA_RETURN_IF_ERROR(tp.Complete(tp.AllGather(
      mine.data(), all.data(), static_cast<size_t>(rows) * sizeof(RowStats), DType::kU8)));
  // Combined in rank order: the same loss and softmax on every rank.
  probs_ = Tensor::Empty(DType::kF32, logits.shape());
  float* probs = probs_.data<float>();
  double loss = 0;
  int64_t hits = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double max = -std::numeric_limits<double>::infinity(), target = 0, argmax = -1;
    for (int k = 0; k < ranks; ++k) {
      // Ranks hold the vocabulary in rank order: the first with the maximum
      // holds its first occurrence.
      if (all[k * rows + r].max > max) {
        max = all[k * rows + r].max;
        argmax = all[k * rows + r].argmax;
      }
    }
    if (argmax == static_cast<double>(targets[r])) ++hits;
    double sum = 0;
    for (int k = 0; k < ranks; ++k) {
      const RowStats& s = all[k * rows + r];
      sum += s.sum_exp * std::exp(s.max - max);
      target += s.target;
    }
    const double log_sum = std::log(sum) + max;
    loss += log_sum - target;
    const float* row = x + r * columns;
    for (int64_t j = 0; j < columns; ++j) {
      probs[r * columns + j] = static_cast<float>(std::exp(static_cast<double>(row[j]) - log_sum));
    }
  }
  targets_ = targets;
  if (correct != nullptr) *correct = hits;
  return loss;
}

void VocabParallelCrossEntropy::Backward(const Tensor& dlogits, float scale) const {
  const int64_t rows = probs_.dim(0), columns = probs_.dim(1);
  Tensor host = HostReadable(dlogits);
  float* d = host.data<float>();
  const float* p = probs_.data<float>();
  for (int64_t i = 0; i < rows * columns; ++i) d[i] = scale * p[i];
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t local = targets_[r] - vocab_begin_;
    if (local >= 0 && local < columns) d[r * columns + local] = scale * (p[r * columns + local] - 1);
  }
  WriteBack(host, dlogits);
}

}  // namespace tessera::parallel
