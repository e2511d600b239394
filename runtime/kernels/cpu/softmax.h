// Row softmax over the last dimension of [rows, dim].
#pragma once

#include <cstdint>

namespace tessera::cpu {

void SoftmaxForward(const float* x, float* y, int64_t rows, int64_t dim);

// One row of SoftmaxForward; returns the row's log-sum-exp, log(sum(exp(x))).
float SoftmaxRow(const float* x, float* y, int64_t dim);
// dx = y * (dy - sum(dy * y)); dx overwritten.
void SoftmaxBackward(const float* dy, const float* y, float* dx, int64_t rows, int64_t dim);

}  // namespace tessera::cpu
