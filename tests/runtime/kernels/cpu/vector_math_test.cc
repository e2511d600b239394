#include "runtime/kernels/cpu/vector_math.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace tessera::cpu {
namespace {

// Relative error against libm's double exp over the whole normal range.
TEST(FastExp, WithinTwoUlpOfExactOverNormalRange) {
  double worst = 0.0;
  for (int i = 0; i <= 200000; ++i) {
    const float x = -87.0f + 175.0f * static_cast<float>(i) / 200000.0f;
    const double want = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(FastExp(x) - want) / want);
  }
  EXPECT_LE(worst, 2.0 * std::numeric_limits<float>::epsilon());
}

TEST(FastExp, OverflowsToInfinityAndFlushesUnderflowToZero) {
  EXPECT_EQ(FastExp(0.0f), 1.0f);
  EXPECT_EQ(FastExp(-100.0f), 0.0f);
  EXPECT_EQ(FastExp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(FastExp(1000.0f), std::numeric_limits<float>::infinity());
  EXPECT_EQ(FastExp(std::numeric_limits<float>::infinity()),
            std::numeric_limits<float>::infinity());
  EXPECT_GT(FastExp(88.0f), 1.6e38f);
}

TEST(FastSigmoid, ExactZeroAndOneAtTheTails) {
  EXPECT_EQ(FastSigmoid(-1000.0f), 0.0f);
  EXPECT_EQ(FastSigmoid(1000.0f), 1.0f);
  EXPECT_FLOAT_EQ(FastSigmoid(0.0f), 0.5f);
  EXPECT_NEAR(FastSigmoid(1.5f), 1.0 / (1.0 + std::exp(-1.5)), 1e-7);
}

}  // namespace
}  // namespace tessera::cpu
