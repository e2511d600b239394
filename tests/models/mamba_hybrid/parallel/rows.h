// Row helpers of the Mamba hybrid's mpirun tests: deterministic inputs the
// same on every rank, sequence shards of sample-major rows, and the
// max-normalized error.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "runtime/tensor/tensor.h"

namespace tessera::mamba_hybrid::testing {

// A deterministic [rows, cols] matrix, the same on every rank.
inline Tensor Matrix(int64_t rows, int64_t cols, double phase) {
  Tensor t = Tensor::Empty(DType::kF32, Shape{rows, cols});
  for (int64_t i = 0; i < t.numel(); ++i) {
    t.data<float>()[i] = static_cast<float>(std::sin(0.61 * static_cast<double>(i) + phase));
  }
  return t;
}

// Rows [first, first + count) of every one of `batch` samples of a
// [batch * seq, cols] matrix.
inline Tensor ShardRows(const Tensor& t, int64_t batch, int64_t seq, int64_t first,
                        int64_t count) {
  const int64_t cols = t.dim(1);
  Tensor out = Tensor::Empty(DType::kF32, Shape{batch * count, cols});
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < count * cols; ++i) {
      out.data<float>()[b * count * cols + i] = t.data<float>()[(b * seq + first) * cols + i];
    }
  }
  return out;
}

// A copy that outlives the arena `t` lives in.
inline Tensor Copy(const Tensor& t) {
  Tensor out = Tensor::Empty(DType::kF32, t.shape());
  std::copy(t.data<float>(), t.data<float>() + t.numel(), out.data<float>());
  return out;
}

// max |got - want| / max |want| over the elements.
inline double RelativeError(const float* got, const float* want, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(double(got[i]) - want[i]));
    scale = std::max(scale, std::abs(double(want[i])));
  }
  return diff / scale;
}

}  // namespace tessera::mamba_hybrid::testing
