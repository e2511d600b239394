#include "runtime/optim/clip.h"

#include <omp.h>

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/base/random.h"

namespace tessera {
namespace {

std::vector<float> Random(int64_t n, uint64_t seed, float scale) {
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = rng.Normal() * scale;
  return x;
}

double NaiveSquaredNorm(const std::vector<float>& x) {
  double sum = 0;
  for (float v : x) sum += static_cast<double>(v) * static_cast<double>(v);
  return sum;
}

TEST(GradNormSquaredPartial, MatchesDoubleSumForOddSizes) {
  for (int64_t n : {0, 1, 17, 16385, 100003}) {
    const std::vector<float> g = Random(n, static_cast<uint64_t>(n) + 1, 3.0f);
    const double expected = NaiveSquaredNorm(g);
    EXPECT_NEAR(GradNormSquaredPartial(g.data(), n), expected, 1e-12 * std::max(1.0, expected))
        << "n=" << n;
  }
}

TEST(GradNormSquaredPartial, IsBitIdenticalForAnyThreadCount) {
  const int64_t n = 200001;
  const std::vector<float> g = Random(n, 5, 1.0f);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = GradNormSquaredPartial(g.data(), n);
  omp_set_num_threads(3);
  const double three = GradNormSquaredPartial(g.data(), n);
  omp_set_num_threads(saved);
  EXPECT_EQ(one, three);
}

TEST(ClipScale, LeavesNormsAtOrBelowTheLimitAlone) {
  EXPECT_EQ(ClipScale(0.5, 1.0), 1.0);
  EXPECT_EQ(ClipScale(1.0, 1.0), 1.0);
  EXPECT_EQ(ClipScale(0.0, 1.0), 1.0);
}

TEST(ClipScale, ZeroMaxNormDisablesClippingAndNonFiniteNormsAreNotHidden) {
  EXPECT_EQ(ClipScale(1e9, 0.0), 1.0);
  EXPECT_EQ(ClipScale(std::numeric_limits<double>::quiet_NaN(), 1.0), 1.0);
  EXPECT_EQ(ClipScale(std::numeric_limits<double>::infinity(), 1.0), 1.0);
}

TEST(ClipScale, SmallGradientsAreUnchangedByTheClipStep) {
  std::vector<float> g = Random(1001, 9, 1e-3f);
  const std::vector<float> before = g;
  const double norm = std::sqrt(GradNormSquaredPartial(g.data(), 1001));
  ASSERT_LT(norm, 1.0);
  ScaleInPlace(g.data(), 1001, static_cast<float>(ClipScale(norm, 1.0)));
  EXPECT_EQ(g, before);
}

TEST(ClipScale, LargeGradientsAreScaledToExactlyMaxNorm) {
  // Two "ranks" each holding part of the gradient: the global norm is the
  // square root of the summed partials.
  const int64_t n = 70001;
  std::vector<float> g = Random(n, 13, 10.0f);
  const int64_t split = 30011;
  const double total = std::sqrt(GradNormSquaredPartial(g.data(), split) +
                                 GradNormSquaredPartial(g.data() + split, n - split));
  ASSERT_NEAR(total, std::sqrt(NaiveSquaredNorm(g)), 1e-9 * total);
  const double max_norm = 2.5;
  const double scale = ClipScale(total, max_norm);
  EXPECT_DOUBLE_EQ(scale, max_norm / total);
  ScaleInPlace(g.data(), split, static_cast<float>(scale));
  ScaleInPlace(g.data() + split, n - split, static_cast<float>(scale));
  EXPECT_NEAR(std::sqrt(NaiveSquaredNorm(g)), max_norm, 1e-6 * max_norm);
}

TEST(ScaleInPlace, MultipliesEveryElementIncludingOddTails) {
  for (int64_t n : {0, 1, 7, 40003}) {
    std::vector<float> x = Random(n, 21, 1.0f);
    const std::vector<float> before = x;
    ScaleInPlace(x.data(), n, 0.375f);  // exact in binary: no rounding beyond the product
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(x[i], before[i] * 0.375f);
  }
}

}  // namespace
}  // namespace tessera
