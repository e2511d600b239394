#include "runtime/optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/base/random.h"
#include "runtime/nn/parameter.h"

namespace tessera {
namespace {

// Odd shapes, decayed and not, one pair of 16-element parameters that sit
// back to back (their decay ranges touch), and one large enough to take the
// OpenMP path.
void RegisterParams(ParameterStore& store) {
  store.Register("w1", Shape{7, 5}, ParamInit::Normal(1.0f), true);
  store.Register("b1", Shape{5}, ParamInit::Normal(1.0f), false);
  store.Register("w2", Shape{3, 11}, ParamInit::Normal(1.0f), true);
  store.Register("norm", Shape{1}, ParamInit::Ones(), false);
  store.Register("w5", Shape{4, 4}, ParamInit::Normal(1.0f), true);
  store.Register("w6", Shape{16}, ParamInit::Normal(1.0f), true);
  store.Register("w3", Shape{17}, ParamInit::Normal(1.0f), true);
  store.Register("big", Shape{200, 201}, ParamInit::Normal(1.0f), true);
  store.Register("bias", Shape{3}, ParamInit::Normal(1.0f), false);
}

OptimConfig TestConfig() {
  OptimConfig config;
  config.set_beta1(0.9);
  config.set_beta2(0.95);
  config.set_eps(1e-8);
  config.set_weight_decay(0.1);
  return config;
}

// Per element: does weight decay apply? Derived naively from ParamInfo.
std::vector<bool> DecayMask(const ParameterStore& store) {
  std::vector<bool> mask(static_cast<size_t>(store.numel()), false);
  for (const ParamInfo& info : store.infos()) {
    for (int64_t i = 0; i < info.local_shape.numel(); ++i) {
      mask[static_cast<size_t>(info.offset + i)] = info.weight_decay;
    }
  }
  return mask;
}

// AdamW in double, one element at a time, as written in the literature.
struct ReferenceAdamW {
  std::vector<double> p, m, v;
  std::vector<bool> decay;
  double beta1, beta2, eps, wd;
  int64_t t = 0;

  void Step(double lr, const std::vector<float>& g) {
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      if (decay[i]) p[i] -= lr * wd * p[i];
      m[i] = beta1 * m[i] + (1 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1 - beta2) * static_cast<double>(g[i]) * g[i];
      const double m_hat = m[i] / (1 - std::pow(beta1, static_cast<double>(t)));
      const double v_hat = v[i] / (1 - std::pow(beta2, static_cast<double>(t)));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
};

std::vector<float> RandomGrads(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> g(static_cast<size_t>(n));
  for (float& x : g) x = rng.Normal() * 0.5f;
  return g;
}

// 1e-6 relative to max(|p|, 1): the initial weights are N(0, 1), so fp32
// rounding of intermediates near 1 bounds what a weight near 0 can match.
double Tolerance(double reference) { return 1e-6 * std::max(std::abs(reference), 1.0); }

TEST(AdamW, MatchesDoubleReferenceWithDecayMaskAndBiasCorrection) {
  ParameterStore store;
  RegisterParams(store);
  store.Finalize(7);
  const OptimConfig config = TestConfig();
  AdamW adamw(store, config);
  ASSERT_GT(adamw.size(), int64_t{1} << 15);  // exercises the threaded loop

  const int64_t n = store.numel();
  float* params = store.values().data<float>();
  ReferenceAdamW ref{std::vector<double>(params, params + n),
                     std::vector<double>(n, 0.0),
                     std::vector<double>(n, 0.0),
                     DecayMask(store),
                     config.beta1(),
                     config.beta2(),
                     config.eps(),
                     config.weight_decay()};
  for (int step = 0; step < 6; ++step) {
    const float lr = 1e-2f * static_cast<float>(step + 1);
    const std::vector<float> grads = RandomGrads(n, 100 + step);
    adamw.Step(lr, params, grads.data());
    ref.Step(lr, grads);
  }
  EXPECT_EQ(adamw.step(), 6);
  const float* m = adamw.m().data<float>();
  const float* v = adamw.v().data<float>();
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_NEAR(params[i], ref.p[i], Tolerance(ref.p[i])) << "element " << i;
    ASSERT_NEAR(m[i], ref.m[i], 1e-6 * std::max(std::abs(ref.m[i]), 1e-1)) << "element " << i;
    ASSERT_NEAR(v[i], ref.v[i], 1e-6 * std::max(std::abs(ref.v[i]), 1e-1)) << "element " << i;
  }
}

TEST(AdamW, FirstStepMovesEachWeightByLrTimesSignOfGradient) {
  // Bias correction makes step 1's update lr * g / (|g| + eps) whatever the betas.
  ParameterStore store;
  store.Register("w", Shape{3, 7}, ParamInit::Normal(1.0f), true);
  store.Finalize(3);
  OptimConfig config;
  config.set_beta1(0.8);
  config.set_beta2(0.99);
  config.set_weight_decay(0);
  AdamW adamw(store, config);
  const int64_t n = store.numel();
  float* params = store.values().data<float>();
  const std::vector<float> before(params, params + n);
  const std::vector<float> grads = RandomGrads(n, 11);
  adamw.Step(0.05f, params, grads.data());
  for (int64_t i = 0; i < n; ++i) {
    const double expected = before[i] - 0.05 * (grads[i] > 0 ? 1.0 : grads[i] < 0 ? -1.0 : 0.0);
    EXPECT_NEAR(params[i], expected, 1e-6);
  }
}

TEST(AdamW, ZeroGradientOnlyDecaysParametersThatOptIn) {
  ParameterStore store;
  RegisterParams(store);
  store.Finalize(5);
  OptimConfig config = TestConfig();
  config.set_weight_decay(0.5);
  AdamW adamw(store, config);
  const int64_t n = store.numel();
  float* params = store.values().data<float>();
  const std::vector<float> before(params, params + n);
  const std::vector<float> zeros(static_cast<size_t>(n), 0.0f);
  adamw.Step(0.1f, params, zeros.data());
  const std::vector<bool> mask = DecayMask(store);
  for (int64_t i = 0; i < n; ++i) {
    const double expected = mask[i] ? before[i] * (1.0 - 0.1 * 0.5) : before[i];
    ASSERT_NEAR(params[i], expected, 1e-6 * std::max(1.0, std::abs(expected))) << i;
  }
}

TEST(AdamW, DecayRangesAreMergedAndMatchThePerElementMask) {
  ParameterStore store;
  RegisterParams(store);
  store.Finalize(1);
  AdamW adamw(store, TestConfig());
  const auto& ranges = adamw.decay_ranges();
  for (size_t r = 1; r < ranges.size(); ++r) {
    EXPECT_LT(ranges[r - 1].second, ranges[r].first) << "ranges must be disjoint and not touch";
  }
  // w5 and w6 are back to back (16 elements each, no padding): one range covers both.
  const int64_t w5 = store.info(store.Find("w5").value()).offset;
  const int64_t w6 = store.info(store.Find("w6").value()).offset;
  ASSERT_EQ(w5 + 16, w6);
  EXPECT_TRUE(std::any_of(ranges.begin(), ranges.end(), [&](const auto& range) {
    return range.first <= w5 && w6 + 16 <= range.second;
  }));
  const std::vector<bool> mask = DecayMask(store);
  std::vector<bool> from_ranges(mask.size(), false);
  for (const auto& [first, last] : ranges) {
    for (int64_t i = first; i < last; ++i) from_ranges[static_cast<size_t>(i)] = true;
  }
  EXPECT_EQ(from_ranges, mask);
}

TEST(AdamW, SubrangeOptimizersEqualTheSlicesOfAFullBufferOptimizer) {
  ParameterStore full_store, shard_store;
  RegisterParams(full_store);
  RegisterParams(shard_store);
  full_store.Finalize(9);
  shard_store.Finalize(9);
  const OptimConfig config = TestConfig();
  const int64_t n = full_store.numel();
  // Cuts through the middle of parameters, including an empty range.
  const std::vector<int64_t> cuts = {0, 37, 37, 100, 1000, n};
  AdamW full(full_store, config);
  std::vector<AdamW> shards;
  for (size_t s = 0; s + 1 < cuts.size(); ++s) {
    shards.emplace_back(shard_store, config, cuts[s], cuts[s + 1]);
  }
  float* full_params = full_store.values().data<float>();
  float* shard_params = shard_store.values().data<float>();
  for (int step = 0; step < 4; ++step) {
    const std::vector<float> grads = RandomGrads(n, 200 + step);
    full.Step(3e-3f, full_params, grads.data());
    for (AdamW& shard : shards) {
      shard.Step(3e-3f, shard_params + shard.begin(), grads.data() + shard.begin());
    }
  }
  for (const AdamW& shard : shards) {
    EXPECT_EQ(shard.StateBytes(), static_cast<size_t>(shard.size()) * 2 * sizeof(float));
    for (int64_t i = 0; i < shard.size(); ++i) {
      const int64_t g = shard.begin() + i;
      ASSERT_FLOAT_EQ(shard_params[g], full_params[g]) << g;
      ASSERT_FLOAT_EQ(shard.m().data<float>()[i], full.m().data<float>()[g]) << g;
      ASSERT_FLOAT_EQ(shard.v().data<float>()[i], full.v().data<float>()[g]) << g;
    }
  }
}

TEST(AdamW, StateIsTwoZeroFilledFp32BuffersOfTheRange) {
  ParameterStore store;
  RegisterParams(store);
  store.Finalize(2);
  AdamW adamw(store, TestConfig(), 10, 75);
  EXPECT_EQ(adamw.size(), 65);
  EXPECT_EQ(adamw.StateBytes(), 65u * 8u);
  EXPECT_EQ(adamw.m().numel(), 65);
  EXPECT_EQ(adamw.step(), 0);
  for (int64_t i = 0; i < 65; ++i) {
    EXPECT_EQ(adamw.m().data<float>()[i], 0.0f);
    EXPECT_EQ(adamw.v().data<float>()[i], 0.0f);
  }
}

}  // namespace
}  // namespace tessera
