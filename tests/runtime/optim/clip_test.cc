#include "runtime/optim/clip.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/backend/backend.h"
#include "runtime/base/random.h"

namespace tessera {
namespace {

std::vector<float> Random(int64_t n, uint64_t seed, float scale) {
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = rng.Normal() * scale;
  return x;
}

// Backend::SumSquares on the host backend (its memory is host memory).
double SumSquares(const float* x, int64_t n) {
  double sum = 0;
  HostBackend().SumSquares(x, n, &sum);
  return sum;
}

double NaiveSquaredNorm(const std::vector<float>& x) {
  double sum = 0;
  for (float v : x) sum += static_cast<double>(v) * static_cast<double>(v);
  return sum;
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
  const double norm = std::sqrt(SumSquares(g.data(), 1001));
  ASSERT_LT(norm, 1.0);
  HostBackend().Scale(g.data(), 1001, static_cast<float>(ClipScale(norm, 1.0)));
  EXPECT_EQ(g, before);
}

TEST(ClipScale, LargeGradientsAreScaledToExactlyMaxNorm) {
  // Two "ranks" each holding part of the gradient: the global norm is the
  // square root of the summed partials.
  const int64_t n = 70001;
  std::vector<float> g = Random(n, 13, 10.0f);
  const int64_t split = 30011;
  const double total = std::sqrt(SumSquares(g.data(), split) +
                                 SumSquares(g.data() + split, n - split));
  ASSERT_NEAR(total, std::sqrt(NaiveSquaredNorm(g)), 1e-9 * total);
  const double max_norm = 2.5;
  const double scale = ClipScale(total, max_norm);
  EXPECT_DOUBLE_EQ(scale, max_norm / total);
  HostBackend().Scale(g.data(), split, static_cast<float>(scale));
  HostBackend().Scale(g.data() + split, n - split, static_cast<float>(scale));
  EXPECT_NEAR(std::sqrt(NaiveSquaredNorm(g)), max_norm, 1e-6 * max_norm);
}

}  // namespace
}  // namespace tessera
