// The sampled softmax loss against a double-precision reference (cosine
// over a temperature, colliding negatives masked) and its backward against
// central differences; the negatives' draw against its documented rules.
#include "models/hstu/sampled_softmax.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::hstu {
namespace {

using cpu::test::MaxRelativeError;
using cpu::test::NumericalGradient;
using cpu::test::RandomFloats;

constexpr int64_t kD = 5, kItems = 6, kNegatives = 4;
constexpr float kTemperature = 0.3f;

HstuBatch TwoUsers() {
  HstuBatch b;
  AppendTrainingUser(std::vector<int64_t>{1, 4, 2, 5}, std::vector<int64_t>{1, 2, 3, 4}, 8, 0, b);
  AppendTrainingUser(std::vector<int64_t>{3, 3, 0}, std::vector<int64_t>{1, 2, 3}, 8, 5, b);
  return b;
}

// sum over tokens of -log softmax(cos(u_t, e_c) / T over unmasked c)[target].
double ReferenceLossSum(const std::vector<double>& u, const std::vector<double>& table,
                        const Candidates& c) {
  const int64_t tokens = static_cast<int64_t>(u.size()) / kD;
  double total = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> logits;
    for (int64_t k = 0; k < c.per_token; ++k) {
      if (c.mask[t * c.per_token + k] != 0) continue;
      const double* e = table.data() + c.ids[t * c.per_token + k] * kD;
      double dot = 0, norm = 0;
      for (int64_t i = 0; i < kD; ++i) {
        dot += u[t * kD + i] * e[i];
        norm += e[i] * e[i];
      }
      logits.push_back(dot / std::sqrt(norm) / kTemperature);
    }
    double max = logits[0], sum = 0;
    for (double l : logits) max = std::max(max, l);
    for (double l : logits) sum += std::exp(l - max);
    total += -(logits[0] - max - std::log(sum));
  }
  return total;
}

TEST(SampledSoftmax, CandidatesAreTheTargetThenUniformNegativesWithCollisionsMasked) {
  const HstuBatch batch = TwoUsers();
  ASSERT_EQ(batch.tokens(), 5);
  const Candidates c = SampleCandidates(batch, 200, kItems, 11, 3);
  std::set<int32_t> seen;
  int collisions = 0;
  for (int64_t t = 0; t < batch.tokens(); ++t) {
    EXPECT_EQ(c.ids[t * c.per_token], batch.targets[t]);
    EXPECT_EQ(c.mask[t * c.per_token], 0.0f);
    for (int64_t k = 1; k < c.per_token; ++k) {
      const int32_t id = c.ids[t * c.per_token + k];
      ASSERT_TRUE(id >= 0 && id < kItems);
      seen.insert(id);
      const bool collides = id == batch.targets[t];
      collisions += collides;
      EXPECT_EQ(c.mask[t * c.per_token + k], collides ? -1e9f : 0.0f);
    }
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(kItems));  // every item drawn
  EXPECT_GT(collisions, 100);  // about 1000 / 6 expected
  // A token's negatives depend on its key alone: the second user alone draws the same.
  HstuBatch alone;
  AppendTrainingUser(std::vector<int64_t>{3, 3, 0}, std::vector<int64_t>{1, 2, 3}, 8, 5, alone);
  const Candidates c2 = SampleCandidates(alone, 200, kItems, 11, 3);
  EXPECT_TRUE(std::equal(c2.ids.begin(), c2.ids.end(), c.ids.begin() + 3 * c.per_token));
  EXPECT_NE(SampleCandidates(batch, 200, kItems, 11, 4).ids, c.ids);  // another step
}

TEST(SampledSoftmax, MatchesTheDoubleReferenceAndFiniteDifferences) {
  const HstuBatch batch = TwoUsers();
  const int64_t tokens = batch.tokens();
  const Candidates c = SampleCandidates(batch, kNegatives, kItems, 1, 0);
  const std::vector<float> u = RandomFloats(tokens * kD, 2);
  const std::vector<float> table = RandomFloats(kItems * kD, 3);
  Arena arena;
  Tensor outputs = Tensor::Empty(DType::kF32, Shape{tokens, kD});
  std::copy(u.begin(), u.end(), outputs.data<float>());
  // The whole table as the distinct rows, each candidate's slot its item.
  Tensor distinct = Tensor::Empty(DType::kF32, Shape{kItems, kD});
  std::copy(table.begin(), table.end(), distinct.data<float>());
  const auto count = static_cast<int64_t>(c.ids.size());
  Tensor slots = Tensor::Empty(DType::kI32, Shape{count});
  std::copy(c.ids.begin(), c.ids.end(), slots.data<int32_t>());
  SampledSoftmax loss(kD, kTemperature);
  double mean = 0;  // host memory: the CPU backend's
  loss.Forward(arena, outputs, distinct, slots, c, &mean);
  const std::vector<double> ud(u.begin(), u.end()), td(table.begin(), table.end());
  EXPECT_NEAR(mean, ReferenceLossSum(ud, td, c) / tokens, 1e-5);

  // Backward adds to the distinct rows' gradient: start it at 1 to see that.
  Tensor ddistinct = Tensor::Empty(DType::kF32, Shape{kItems, kD});
  std::fill_n(ddistinct.data<float>(), ddistinct.numel(), 1.0f);
  const float scale = 0.75f;
  Tensor du = loss.Backward(arena, ddistinct, scale);
  std::vector<float> dtable(ddistinct.data<float>(), ddistinct.data<float>() + table.size());
  for (float& g : dtable) g -= 1.0f;
  const auto want_du = NumericalGradient(
      [&](const std::vector<double>& v) { return scale * ReferenceLossSum(v, td, c); }, ud);
  EXPECT_LT(MaxRelativeError(du.data<float>(), want_du.data(), tokens * kD), 1e-4);
  auto want_dt = NumericalGradient(
      [&](const std::vector<double>& v) { return scale * ReferenceLossSum(ud, v, c); }, td);
  EXPECT_LT(MaxRelativeError(dtable, want_dt), 1e-4);
}

}  // namespace
}  // namespace tessera::hstu
