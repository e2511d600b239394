#include "runtime/kernels/cpu/softmax.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::cpu {
namespace {

using test::Dot;
using test::MaxRelativeError;
using test::NumericalGradient;
using test::RandomFloats;
using test::ToDouble;

std::vector<double> ReferenceSoftmax(const std::vector<double>& x, int64_t rows, int64_t dim) {
  std::vector<double> y(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    double max = x[r * dim];
    for (int64_t j = 0; j < dim; ++j) max = std::max(max, x[r * dim + j]);
    double sum = 0.0;
    for (int64_t j = 0; j < dim; ++j) sum += std::exp(x[r * dim + j] - max);
    for (int64_t j = 0; j < dim; ++j) y[r * dim + j] = std::exp(x[r * dim + j] - max) / sum;
  }
  return y;
}

TEST(Softmax, ForwardMatchesDoubleReference) {
  uint64_t seed = 1;
  for (int64_t rows : {0, 1, 7, 33}) {
    for (int64_t dim : {1, 7, 33, 1000}) {
      const auto x = RandomFloats(rows * dim, seed++, -8.0f, 8.0f);
      std::vector<float> y(rows * dim);
      SoftmaxForward(x.data(), y.data(), rows, dim);
      EXPECT_LE(MaxRelativeError(y, ReferenceSoftmax(ToDouble(x), rows, dim)), 1e-5)
          << "rows=" << rows << " dim=" << dim;
    }
  }
}

// Logits far beyond exp's float range (1e4, -1e4) must neither overflow nor
// turn into NaN: the row max is subtracted first.
TEST(Softmax, ForwardIsStableForHugeLogits) {
  const std::vector<float> x = {1e4f, 1e4f - 1.0f, -1e4f, 0.0f, 88.0f, 89.0f, -200.0f, 90.0f};
  std::vector<float> y(x.size());
  SoftmaxForward(x.data(), y.data(), 2, 4);
  EXPECT_LE(MaxRelativeError(y, ReferenceSoftmax(ToDouble(x), 2, 4)), 1e-6);
}

TEST(Softmax, BackwardMatchesFiniteDifferences) {
  uint64_t seed = 10;
  for (int64_t dim : {1, 6, 17}) {
    const int64_t rows = 5;
    const auto x = RandomFloats(rows * dim, seed++, -3.0f, 3.0f);
    const auto dy = RandomFloats(rows * dim, seed++);
    std::vector<float> y(rows * dim), dx(rows * dim, 9.0f);
    SoftmaxForward(x.data(), y.data(), rows, dim);
    SoftmaxBackward(dy.data(), y.data(), dx.data(), rows, dim);
    const auto dyd = ToDouble(dy);
    const auto want = NumericalGradient(
        [&](const std::vector<double>& v) { return Dot(dyd, ReferenceSoftmax(v, rows, dim)); },
        ToDouble(x));
    EXPECT_LE(MaxRelativeError(dx, want), 1e-4) << "dim=" << dim;
  }
}

TEST(Softmax, ResultsAreBitwiseIndependentOfThreadCount) {
  const int64_t rows = 97, dim = 515;
  const auto x = RandomFloats(rows * dim, 20, -5.0f, 5.0f);
  const auto dy = RandomFloats(rows * dim, 21);
  auto run = [&](int threads) {
    test::ScopedNumThreads scoped(threads);
    std::vector<float> y(rows * dim), dx(rows * dim);
    SoftmaxForward(x.data(), y.data(), rows, dim);
    SoftmaxBackward(dy.data(), y.data(), dx.data(), rows, dim);
    y.insert(y.end(), dx.begin(), dx.end());
    return y;
  };
  EXPECT_TRUE(test::BitwiseEqual(run(1), run(3)));
}

}  // namespace
}  // namespace tessera::cpu
