// Error categories map to the documented exit codes; random streams are
// deterministic and independent.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "runtime/base/errors.h"
#include "runtime/base/random.h"

namespace tessera {
namespace {

TEST(ExitCodeFor, MapsEachCategoryToItsDocumentedCode) {
  EXPECT_EQ(ExitCodeFor(absl::OkStatus()), 0);
  EXPECT_EQ(ExitCodeFor(UsageError("x")), 2);
  EXPECT_EQ(ExitCodeFor(DataError("x")), 3);
  EXPECT_EQ(ExitCodeFor(CheckpointError("x")), 4);
  EXPECT_EQ(ExitCodeFor(CommunicationError("x")), 5);
  EXPECT_EQ(ExitCodeFor(NumericalError("x")), 6);
  EXPECT_EQ(ExitCodeFor(absl::InternalError("x")), 1);
  EXPECT_EQ(ExitCodeFor(WithCategory(DataError("x"), ErrorCategory::kCheckpoint)), 4);
  EXPECT_EQ(UsageError("train.steps=0 must be >= 1").message(), "train.steps=0 must be >= 1");
}

TEST(Rng, IsDeterministicAndStreamsDiffer) {
  Rng a(1, 2), b(1, 2), c(1, 3), d(2, 2);
  std::set<uint64_t> firsts;
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.NextU64();
    EXPECT_EQ(x, b.NextU64());
    firsts.insert(x);
  }
  EXPECT_NE(Rng(1, 2).NextU64(), c.NextU64());
  EXPECT_NE(Rng(1, 2).NextU64(), d.NextU64());
  EXPECT_EQ(firsts.size(), 100u);
  Rng e(5);
  e.NextU64();
  Rng f(0);
  f.set_state(e.state());
  EXPECT_EQ(e.NextU64(), f.NextU64());
}

TEST(Rng, NormalAndUniformHaveTheRightMoments) {
  Rng rng(3);
  double sum = 0, squares = 0, uniform_sum = 0;
  constexpr int kN = 200000;
  for (int i = 0; i < kN; ++i) {
    const double z = rng.Normal();
    sum += z;
    squares += z * z;
    const float u = rng.Uniform();
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    uniform_sum += u;
  }
  EXPECT_NEAR(sum / kN, 0.0, 0.01);
  EXPECT_NEAR(squares / kN, 1.0, 0.01);
  EXPECT_NEAR(uniform_sum / kN, 0.5, 0.005);
  for (int i = 0; i < 1000; ++i) EXPECT_LT(rng.Below(7), 7u);
}

TEST(CounterDraws, DependOnlyOnKeyAndCounter) {
  EXPECT_EQ(CounterNormal(11, 5), CounterNormal(11, 5));
  EXPECT_NE(CounterNormal(11, 5), CounterNormal(11, 6));
  EXPECT_NE(CounterNormal(11, 5), CounterNormal(12, 5));
  EXPECT_NE(HashName("blocks.0.attn.qkv.weight"), HashName("blocks.1.attn.qkv.weight"));
}

}  // namespace
}  // namespace tessera
