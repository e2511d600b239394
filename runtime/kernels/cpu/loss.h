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

}  // namespace tessera::cpu
