// The parameter store: aligned flat layout, and initial values that depend on
// (seed, name, element) only.
#include "runtime/nn/parameter.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace tessera {
namespace {

TEST(ParameterStore, LaysOutAlignedViewsAndInitializesByNameNotOrder) {
  ParameterStore a, b;
  a.Register("x", Shape{3, 5}, ParamInit::Normal(1.0f), true);
  a.Register("y", Shape{7}, ParamInit::Uniform(0.5f), false);
  b.Register("y", Shape{7}, ParamInit::Uniform(0.5f), false);
  b.Register("x", Shape{3, 5}, ParamInit::Normal(1.0f), true);
  a.Finalize(9);
  b.Finalize(9);
  for (const char* name : {"x", "y"}) {
    Tensor pa = a.param(*a.Find(name)), pb = b.param(*b.Find(name));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(pa.raw()) % 64, 0u);
    ASSERT_EQ(std::memcmp(pa.raw(), pb.raw(), pa.bytes()), 0) << name;
  }
  const Tensor y = a.param(*a.Find("y"));
  for (int i = 0; i < 7; ++i) EXPECT_LT(std::fabs(y.data<float>()[i]), 0.5f);
  EXPECT_FALSE(a.Find("z").ok());
  EXPECT_FALSE(a.info(*a.Find("y")).weight_decay);
}

TEST(ParameterStore, NormalInitHasTheRequestedSpread) {
  ParameterStore store;
  store.Register("w", Shape{100000}, ParamInit::Normal(0.02f), true);
  store.Finalize(1);
  const float* w = store.param(0).data<float>();
  double sum = 0, squares = 0;
  for (int i = 0; i < 100000; ++i) sum += w[i], squares += static_cast<double>(w[i]) * w[i];
  EXPECT_NEAR(sum / 1e5, 0.0, 3 * 0.02 / std::sqrt(1e5));
  EXPECT_NEAR(std::sqrt(squares / 1e5), 0.02, 0.02 * 0.01);
}

}  // namespace
}  // namespace tessera
