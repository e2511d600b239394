#include "runtime/optim/ema.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/base/random.h"

namespace tessera {
namespace {

std::vector<float> Random(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = rng.Normal();
  return x;
}

TEST(Ema, StartsAsACopyOfTheParameters) {
  const std::vector<float> p = Random(13, 1);
  Ema ema(HostBackend(), p.data(), 13);
  ASSERT_EQ(ema.size(), 13);
  for (int i = 0; i < 13; ++i) EXPECT_EQ(ema.values().data<float>()[i], p[i]);
}

// With constant parameters b after starting from a, n updates give
// d^n a + (1 - d^n) b.
void ExpectClosedForm(int64_t size, double decay, int updates) {
  const std::vector<float> a = Random(size, 2);
  const std::vector<float> b = Random(size, 3);
  Ema ema(HostBackend(), a.data(), size);
  for (int k = 0; k < updates; ++k) ema.Update(b.data(), decay);
  const double dn = std::pow(decay, updates);
  for (int64_t i = 0; i < size; ++i) {
    const double expected = dn * a[i] + (1 - dn) * b[i];
    ASSERT_NEAR(ema.values().data<float>()[i], expected, 1e-5) << "element " << i;
  }
}

TEST(Ema, MatchesClosedFormAfterUpdatesWithConstantParameters) {
  ExpectClosedForm(37, 0.9, 25);
  ExpectClosedForm(1, 0.5, 10);
  ExpectClosedForm(40001, 0.99, 20);  // threaded path
  ExpectClosedForm(101, 0.9999, 300);
}

TEST(Ema, DecayZeroTakesTheParameters) {
  const std::vector<float> a = Random(9, 4), b = Random(9, 5);
  Ema ema(HostBackend(), a.data(), 9);
  ema.Update(b.data(), 0.0);
  // Up to the rounding of a + (b - a).
  for (int i = 0; i < 9; ++i) EXPECT_NEAR(ema.values().data<float>()[i], b[i], 1e-6);
}

TEST(Ema, EmptyBufferIsANoOp) {
  Ema ema(HostBackend(), nullptr, 0);
  ema.Update(nullptr, 0.9);
  EXPECT_EQ(ema.size(), 0);
}

}  // namespace
}  // namespace tessera
