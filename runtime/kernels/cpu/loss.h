// Losses. Each forward returns the mean loss in double; each backward writes
// the gradient of (scale * mean loss).
#pragma once

#include <cstdint>

namespace tessera::cpu {

// mean((pred - target)^2) over n elements.
double MseForward(const float* pred, const float* target, int64_t n);
// dpred = scale * 2 (pred - target) / n; overwritten.
void MseBackward(const float* pred, const float* target, float* dpred, int64_t n, float scale);

// Mean over rows of -log softmax(logits[r])[targets[r]]; probs [rows, classes]
// receives the softmax (saved for backward). Targets must be in [0, classes).
double CrossEntropyForward(const float* logits, const int32_t* targets, float* probs,
                           int64_t rows, int64_t classes);
// dlogits = scale * (probs - onehot(targets)) / rows; overwritten.
void CrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits,
                          int64_t rows, int64_t classes, float scale);

// Cross-entropy over a vocabulary split in rank order (Megatron's
// vocab-parallel cross-entropy; parallel/tensor_parallel/
// vocab_parallel_cross_entropy.h). logits [rows, columns] hold global ids
// [column_offset, column_offset + columns); targets are global ids.
// stats [rows, 4] per row: the maximum, sum of exp(x - maximum), the target's
// logit (0 when another rank holds it) and the global id of the first
// maximum, all in double.
void VocabCrossEntropyStats(const float* logits, const int32_t* targets, int64_t rows,
                            int64_t columns, int64_t column_offset, double* stats);
// all_stats [ranks, rows, 4]: every rank's stats in rank order. Per row, M =
// the largest maximum (the first rank holding it gives the argmax), S = sum_k
// s_k exp(m_k - M), log-sum-exp = log S + M; probs = exp(x - log-sum-exp) on
// this rank's columns; totals[0] = sum over rows (in order) of log-sum-exp -
// target logit, totals[1] = rows whose argmax is the target.
void VocabCrossEntropyCombine(const float* logits, const double* all_stats, int64_t ranks,
                              const int32_t* targets, float* probs, int64_t rows, int64_t columns,
                              double* totals);
// dlogits = scale * (probs - onehot(target - column_offset)), the one-hot
// only where this rank holds the target; overwritten.
void VocabCrossEntropyBackward(const float* probs, const int32_t* targets, float* dlogits,
                               int64_t rows, int64_t columns, int64_t column_offset, float scale);

}  // namespace tessera::cpu
