// Every layer's Backward against finite differences of its Forward, for the
// input and for every parameter.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <functional>
#include <optional>
#include <vector>

#include "runtime/nn/attention.h"
#include "runtime/nn/layer_norm.h"
#include "runtime/nn/linear.h"
#include "runtime/nn/moe.h"
#include "runtime/nn/swiglu_mlp.h"
#include "tests/testing/gradient_check.h"

namespace tessera {
namespace {
using testing::CheckGradient;
using testing::GradientCheckOptions;
using testing::RandomTensor;
using testing::WeightedSum;

// Replaces every parameter by N(0, scale^2) so zero-initialized ones do not
// hide bugs.
void RandomizeParameters(ParameterStore& store, uint64_t seed, float scale = 0.5f) {
  testing::FillNormal(store.values().data<float>(), store.numel(), seed, scale);
}

struct LayerUnderTest {
  std::function<Tensor(Arena&, const Tensor&)> forward;
  std::function<Tensor(Arena&, const Tensor&)> backward;  // dy -> dx
  std::function<double()> extra_loss = [] { return 0.0; };  // e.g. a balance loss
};

void CheckLayer(ParameterStore& store, const LayerUnderTest& layer, Tensor x, Shape out_shape,
                const GradientCheckOptions& options = {}) {
  Tensor r = RandomTensor(out_shape, 99);
  Arena arena;
  auto loss = [&] {
    arena.Reset();
    const double value = WeightedSum(layer.forward(arena, x), r) + layer.extra_loss();
    return value;
  };
  store.ZeroGrads();
  arena.Reset();
  Tensor y = layer.forward(arena, x);
  ASSERT_EQ(y.shape(), out_shape);
  Tensor dx = layer.backward(arena, r);
  std::vector<float> dx_copy(dx.data<float>(), dx.data<float>() + dx.numel());
  std::vector<float> grads(store.grads().data<float>(),
                           store.grads().data<float>() + store.numel());
  CheckGradient("dx", x.data<float>(), dx_copy.data(), x.numel(), loss, options);
  for (const ParamInfo& info : store.infos()) {
    CheckGradient(info.name, store.values().data<float>() + info.offset,
                  grads.data() + info.offset, info.local_shape.numel(), loss, options);
  }
}

TEST(Linear, BackwardMatchesFiniteDifferences) {
  ParameterStore store;
  Linear linear(store, "linear", 7, 5);
  store.Finalize(1);
  RandomizeParameters(store, 2);
  CheckLayer(store,
             {[&](Arena& a, const Tensor& x) { return linear.Forward(a, x); },
              [&](Arena& a, const Tensor& dy) { return linear.Backward(a, dy); }},
             RandomTensor(Shape{6, 7}, 3), Shape{6, 5});
}

TEST(Linear, ParameterGradientsAccumulateOverCalls) {
  ParameterStore store;
  Linear linear(store, "linear", 4, 3);
  store.Finalize(1);
  Tensor x = RandomTensor(Shape{5, 4}, 3), dy = RandomTensor(Shape{5, 3}, 4);
  Arena arena;
  linear.Forward(arena, x);
  linear.Backward(arena, dy);
  std::vector<float> once(store.grads().data<float>(), store.grads().data<float>() + store.numel());
  linear.Forward(arena, x);
  linear.Backward(arena, dy);
  for (int64_t i = 0; i < store.numel(); ++i)
    EXPECT_FLOAT_EQ(store.grads().data<float>()[i], 2 * once[i]);
}

// In a bf16 run a Linear computes on bf16-rounded inputs, except one built
// with fp32_gemm (the MoE router), which gives the fp32 result bit for bit.
TEST(Linear, Fp32GemmOptionKeepsFp32InsideABf16Run) {
  std::string note;
  if (!HostBackend().CheckPrecision(MathPrecision::kBf16, &note).ok()) {
    GTEST_SKIP() << "no bf16 GEMMs on this CPU";
  }
  Linear::Options fp32_options;
  fp32_options.fp32_gemm = true;
  ParameterStore store;
  Linear plain(store, "plain", 16, 8), fp32(store, "fp32", 16, 8, fp32_options);
  store.Finalize(1);
  RandomizeParameters(store, 5);
  std::copy_n(store.param(plain.weight_id()).data<float>(), 16 * 8,
              store.param(fp32.weight_id()).data<float>());
  std::copy_n(store.param(plain.bias_id()).data<float>(), 8,
              store.param(fp32.bias_id()).data<float>());
  Tensor x = RandomTensor(Shape{4, 16}, 6);
  Arena arena;
  auto run = [&](Linear& linear) {
    Tensor y = linear.Forward(arena, x);
    return std::vector<float>(y.data<float>(), y.data<float>() + y.numel());
  };
  const std::vector<float> fp32_reference = run(plain);
  std::vector<float> plain_bf16, fp32_bf16;
  {
    ScopedGemmPrecision bf16(HostBackend(), MathPrecision::kBf16);
    plain_bf16 = run(plain);
    fp32_bf16 = run(fp32);
  }
  EXPECT_EQ(HostBackend().gemm_precision(), MathPrecision::kFp32) << "scope not restored";
  EXPECT_EQ(fp32_bf16, fp32_reference);
  EXPECT_NE(plain_bf16, fp32_reference);
}

// Inside a bf16 step (ParameterStore::ScopedBf16Values) Linear and
// SwigluMlp multiply the store's bf16 weight copies and their activations'
// copies (rounded once per activation): outputs, input gradients and weight
// gradients equal, bit for bit, those of rounding every input in each GEMM
// (no scope), and differ from fp32 (the rounding happened).
TEST(Linear, Bf16StepCopiesGiveTheResultsOfRoundingInEachGemm) {
  std::string note;
  if (!HostBackend().CheckPrecision(MathPrecision::kBf16, &note).ok()) {
    GTEST_SKIP() << "no bf16 GEMMs on this CPU";
  }
  ParameterStore store;
  Linear linear(store, "linear", 24, 40);
  SwigluMlp mlp(store, "mlp", 40, 56);
  store.Finalize(1);
  RandomizeParameters(store, 7);
  const Tensor x = RandomTensor(Shape{37, 24}, 8), dy = RandomTensor(Shape{37, 40}, 9);
  struct Result {
    std::vector<float> y, dx, grads;
  };
  auto run = [&](bool scoped) {
    std::optional<ParameterStore::ScopedBf16Values> copies;
    if (scoped) copies.emplace(store);
    EXPECT_EQ(store.param_bf16(linear.weight_id()) != nullptr,
              scoped && HostBackend().gemm_precision() == MathPrecision::kBf16);
    store.ZeroGrads();
    Arena arena;
    const Tensor h = linear.Forward(arena, x);
    const Tensor y = mlp.Forward(arena, h);
    const Tensor dh = mlp.Backward(arena, dy);
    const Tensor dx = linear.Backward(arena, dh);
    return Result{{y.data<float>(), y.data<float>() + y.numel()},
                  {dx.data<float>(), dx.data<float>() + dx.numel()},
                  {store.grads().data<float>(), store.grads().data<float>() + store.numel()}};
  };
  const Result fp32 = run(true);
  ScopedGemmPrecision bf16(HostBackend(), MathPrecision::kBf16);
  const Result per_gemm = run(false), copies = run(true);
  EXPECT_EQ(copies.y, per_gemm.y);
  EXPECT_EQ(copies.dx, per_gemm.dx);
  EXPECT_EQ(copies.grads, per_gemm.grads);
  EXPECT_NE(copies.y, fp32.y);
  EXPECT_NE(copies.grads, fp32.grads);
  // Still the same function: within bf16's rounding of the output's scale.
  double diff = 0, norm = 0;
  for (size_t i = 0; i < copies.y.size(); ++i) {
    diff += (copies.y[i] - fp32.y[i]) * static_cast<double>(copies.y[i] - fp32.y[i]);
    norm += fp32.y[i] * static_cast<double>(fp32.y[i]);
  }
  EXPECT_LT(std::sqrt(diff / norm), 0.02);
}

// The same for the MoE layer, whose routed experts run as grouped GEMMs
// (GroupedSwigluExperts, Backend::GemmGrouped with the problems' copies)
// and whose router stays fp32.
TEST(MoeLayer, Bf16StepCopiesGiveTheResultsOfRoundingInEachGemm) {
  std::string note;
  if (!HostBackend().CheckPrecision(MathPrecision::kBf16, &note).ok()) {
    GTEST_SKIP() << "no bf16 GEMMs on this CPU";
  }
  ParameterStore store;
  MoeLayer::Options options;
  options.num_experts = 4;
  options.top_k = 2;
  options.expert_hidden = 24;
  options.shared_expert_hidden = 16;
  MoeLayer moe(store, "moe", 20, options);
  store.Finalize(1);
  RandomizeParameters(store, 11);
  const Tensor x = RandomTensor(Shape{45, 20}, 12), dy = RandomTensor(Shape{45, 20}, 13);
  auto run = [&](bool scoped) {
    std::optional<ParameterStore::ScopedBf16Values> copies;
    if (scoped) copies.emplace(store);
    store.ZeroGrads();
    Arena arena;
    const Tensor y = *moe.Forward(arena, x);
    const Tensor dx = moe.Backward(arena, dy, 1.0f);
    std::vector<float> all(y.data<float>(), y.data<float>() + y.numel());
    all.insert(all.end(), dx.data<float>(), dx.data<float>() + dx.numel());
    all.insert(all.end(), store.grads().data<float>(),
               store.grads().data<float>() + store.numel());
    return all;
  };
  const std::vector<float> fp32 = run(true);
  ScopedGemmPrecision bf16(HostBackend(), MathPrecision::kBf16);
  const std::vector<float> per_gemm = run(false), copies = run(true);
  EXPECT_EQ(copies, per_gemm);
  EXPECT_NE(copies, fp32);
}

TEST(LayerNorm, AffineBackwardMatchesFiniteDifferences) {
  ParameterStore store;
  LayerNorm norm(store, "norm", 9, /*affine=*/true);
  store.Finalize(1);
  RandomizeParameters(store, 2);
  CheckLayer(store,
             {[&](Arena& a, const Tensor& x) { return norm.Forward(a, x); },
              [&](Arena& a, const Tensor& dy) { return norm.Backward(a, dy); }},
             RandomTensor(Shape{4, 9}, 3), Shape{4, 9});
}

TEST(LayerNorm, WithoutAffineRegistersNoParameters) {
  ParameterStore store;
  LayerNorm norm(store, "norm", 9, /*affine=*/false);
  EXPECT_EQ(store.size(), 0);
}

TEST(MultiHeadAttention, BackwardMatchesFiniteDifferences) {
  ParameterStore store;
  constexpr int64_t kBatch = 2, kSeq = 5, kHidden = 8, kHeads = 2;
  MultiHeadAttention attention(store, "attn", kHidden, kHeads);
  store.Finalize(1);
  RandomizeParameters(store, 2);
  CheckLayer(store,
             {[&](Arena& a, const Tensor& x) { return attention.Forward(a, x, kBatch, kSeq); },
              [&](Arena& a, const Tensor& dy) { return attention.Backward(a, dy); }},
             RandomTensor(Shape{kBatch * kSeq, kHidden}, 3), Shape{kBatch * kSeq, kHidden});
}

TEST(SwigluMlp, BackwardMatchesFiniteDifferences) {
  ParameterStore store;
  SwigluMlp mlp(store, "mlp", 6, 10);
  store.Finalize(1);
  RandomizeParameters(store, 2);
  CheckLayer(store,
             {[&](Arena& a, const Tensor& x) { return mlp.Forward(a, x); },
              [&](Arena& a, const Tensor& dy) { return mlp.Backward(a, dy); }},
             RandomTensor(Shape{7, 6}, 3), Shape{7, 6});
}

MoeLayer::Options SmallMoe() {
  MoeLayer::Options options;
  options.num_experts = 4;
  options.top_k = 2;
  options.expert_hidden = 8;
  options.shared_expert_hidden = 6;
  options.balance_loss_coef = 0.5f;  // large, so its gradient is visible
  return options;
}

void CheckMoe(const MoeLayer::Options& options) {
  ParameterStore store;
  MoeLayer moe(store, "moe", 6, options);
  store.Finalize(1);
  RandomizeParameters(store, 2);
  // A small step keeps finite differences from flipping the top-k choice.
  GradientCheckOptions check;
  check.step = 2e-3f;
  check.tolerance = 3e-2;
  check.floor = 3e-2;  // fp32 loss noise is ~3e-4 absolute at this step
  CheckLayer(store,
             {[&](Arena& a, const Tensor& x) { return moe.Forward(a, x).value(); },
              [&](Arena& a, const Tensor& dy) { return moe.Backward(a, dy, 1.0f); },
              [&] { return moe.balance_loss(); }},
             RandomTensor(Shape{9, 6}, 3), Shape{9, 6}, check);
}

TEST(MoeLayer, BackwardMatchesFiniteDifferencesIncludingBalanceLoss) { CheckMoe(SmallMoe()); }

TEST(MoeLayer, RenormalizedTopKBackwardMatchesFiniteDifferences) {
  MoeLayer::Options options = SmallMoe();
  options.renormalize_topk = true;
  CheckMoe(options);
}

TEST(MoeLayer, CapacityDropsBackwardMatchesFiniteDifferences) {
  MoeLayer::Options options = SmallMoe();
  options.capacity_factor = 0.5f;  // forces drops
  CheckMoe(options);
}

TEST(MoeLayer, WithoutSharedExpertBackwardMatchesFiniteDifferences) {
  MoeLayer::Options options = SmallMoe();
  options.shared_expert_hidden = 0;
  CheckMoe(options);
}

// Naive reference: every token through its top-k experts, weighted, plus the
// shared expert, computed with independent SwigluMlp forwards per token.
TEST(MoeLayer, ForwardMatchesPerTokenReference) {
  ParameterStore store;
  MoeLayer::Options options = SmallMoe();
  MoeLayer moe(store, "moe", 6, options);
  store.Finalize(1);
  RandomizeParameters(store, 2);
  Tensor x = RandomTensor(Shape{9, 6}, 3);
  Arena arena;
  Tensor y = moe.Forward(arena, x).value();
  std::vector<float> got(y.data<float>(), y.data<float>() + y.numel());

  const float* router = store.param(*store.Find("moe.router.weight")).data<float>();
  auto mlp = [&](const std::string& prefix, const float* in, int64_t hidden, double* out) {
    const float* wg = store.param(*store.Find(prefix + ".w_gate")).data<float>();
    const float* wu = store.param(*store.Find(prefix + ".w_up")).data<float>();
    const float* wd = store.param(*store.Find(prefix + ".w_down")).data<float>();
    std::vector<double> act(hidden);
    for (int64_t h = 0; h < hidden; ++h) {
      double g = 0, u = 0;
      for (int64_t d = 0; d < 6; ++d) {
        g += static_cast<double>(wg[h * 6 + d]) * in[d];
        u += static_cast<double>(wu[h * 6 + d]) * in[d];
      }
      act[h] = g / (1 + std::exp(-g)) * u;
    }
    for (int64_t d = 0; d < 6; ++d) {
      out[d] = 0;
      for (int64_t h = 0; h < hidden; ++h) out[d] += static_cast<double>(wd[d * hidden + h]) * act[h];
    }
  };
  std::vector<double> balance_count(4, 0), mean_prob(4, 0);
  for (int64_t t = 0; t < 9; ++t) {
    const float* in = x.data<float>() + t * 6;
    double logits[4], probs[4], total = 0, max_logit = -1e30;
    for (int e = 0; e < 4; ++e) {
      logits[e] = 0;
      for (int d = 0; d < 6; ++d) logits[e] += static_cast<double>(router[e * 6 + d]) * in[d];
      max_logit = std::max(max_logit, logits[e]);
    }
    for (int e = 0; e < 4; ++e) total += probs[e] = std::exp(logits[e] - max_logit);
    for (int e = 0; e < 4; ++e) {
      probs[e] /= total;
      mean_prob[e] += probs[e] / 9;
    }
    int first = 0, second = -1;
    for (int e = 1; e < 4; ++e) if (probs[e] > probs[first]) first = e;
    for (int e = 0; e < 4; ++e)
      if (e != first && (second < 0 || probs[e] > probs[second])) second = e;
    double expected[6], part[6];
    mlp("moe.shared_expert", in, 6, expected);
    for (int chosen : {first, second}) {
      balance_count[chosen] += 1;
      mlp("moe.experts." + std::to_string(chosen), in, 8, part);
      for (int d = 0; d < 6; ++d) expected[d] += probs[chosen] * part[d];
    }
    for (int d = 0; d < 6; ++d) EXPECT_NEAR(got[t * 6 + d], expected[d], 1e-4) << t << "," << d;
  }
  double balance = 0;
  for (int e = 0; e < 4; ++e) balance += 0.5 * (balance_count[e] / 18.0 * 4) * mean_prob[e];
  EXPECT_NEAR(moe.balance_loss(), balance, 1e-6);
}

TEST(MoeLayer, ExpertsWithoutTokensAreANormalCase) {
  ParameterStore store;
  MoeLayer::Options options = SmallMoe();
  options.num_experts = 8;
  MoeLayer moe(store, "moe", 6, options);
  store.Finalize(1);
  Tensor x = RandomTensor(Shape{1, 6}, 3);  // one token: 6 of 8 experts idle
  Arena arena;
  Tensor y = moe.Forward(arena, x).value();
  Tensor dx = moe.Backward(arena, RandomTensor(Shape{1, 6}, 4), 1.0f);
  int idle = 0;
  for (double share : moe.expert_load()) idle += share == 0;
  EXPECT_EQ(idle, 6);
  for (int64_t i = 0; i < dx.numel(); ++i) EXPECT_TRUE(std::isfinite(dx.data<float>()[i]));
}

// GLOBAL_BATCH scope with one replica: the second micro-batch of a step
// counts the assignments of both (its load is that of one forward over their
// concatenation, the oracle); after BeginStep the count starts again.
TEST(MoeLayer, GlobalBalanceCountsAccumulateOverTheStepsMicroBatches) {
  GlobalBalanceCounts counts;
  MoeLayer::Options options = SmallMoe();
  options.global_balance = &counts;
  ParameterStore store, oracle_store;
  MoeLayer moe(store, "moe", 6, options);
  MoeLayer oracle(oracle_store, "moe", 6, SmallMoe());
  store.Finalize(1);
  oracle_store.Finalize(1);
  RandomizeParameters(store, 2);
  RandomizeParameters(oracle_store, 2);
  const Tensor x1 = RandomTensor(Shape{5, 6}, 3), x2 = RandomTensor(Shape{4, 6}, 4);
  Tensor both = Tensor::Empty(DType::kF32, Shape{9, 6});
  std::copy_n(x1.data<float>(), 30, both.data<float>());
  std::copy_n(x2.data<float>(), 24, both.data<float>() + 30);
  Arena arena;
  counts.BeginStep();
  ASSERT_TRUE(moe.Forward(arena, x1).ok());
  ASSERT_TRUE(moe.Forward(arena, x2).ok());
  ASSERT_TRUE(oracle.Forward(arena, both).ok());
  ASSERT_EQ(moe.expert_load().size(), 4u);
  for (int e = 0; e < 4; ++e) EXPECT_DOUBLE_EQ(moe.expert_load()[e], oracle.expert_load()[e]);

  counts.BeginStep();
  ASSERT_TRUE(moe.Forward(arena, x2).ok());
  ASSERT_TRUE(oracle.Forward(arena, x2).ok());
  for (int e = 0; e < 4; ++e) EXPECT_DOUBLE_EQ(moe.expert_load()[e], oracle.expert_load()[e]);
  EXPECT_DOUBLE_EQ(moe.balance_loss(), oracle.balance_loss());

  // Inactive (sampling, evaluation): the forward's own tokens only.
  counts.set_active(false);
  ASSERT_TRUE(moe.Forward(arena, x1).ok());
  ASSERT_TRUE(oracle.Forward(arena, x1).ok());
  for (int e = 0; e < 4; ++e) EXPECT_DOUBLE_EQ(moe.expert_load()[e], oracle.expert_load()[e]);
}

// The replicas' sum reaches f_i: a second replica holding the same tokens
// doubles every count and the token count, leaving f_i (and the loss) as
// one replica's; a failing sum is the forward's error.
TEST(MoeLayer, GlobalBalanceCountsSumOverReplicasAndReportItsFailure) {
  int calls = 0;
  GlobalBalanceCounts twice([&calls](std::vector<int64_t>& values) {
    ++calls;
    for (int64_t& v : values) v *= 2;
    return absl::OkStatus();
  });
  GlobalBalanceCounts broken([](std::vector<int64_t>&) {
    return absl::UnavailableError("dp all-reduce timed out");
  });
  MoeLayer::Options options = SmallMoe();
  options.global_balance = &twice;
  ParameterStore store, oracle_store, broken_store;
  MoeLayer moe(store, "moe", 6, options);
  MoeLayer oracle(oracle_store, "moe", 6, SmallMoe());
  options.global_balance = &broken;
  MoeLayer failing(broken_store, "moe", 6, options);
  for (ParameterStore* s : {&store, &oracle_store, &broken_store}) {
    s->Finalize(1);
    RandomizeParameters(*s, 2);
  }
  const Tensor x = RandomTensor(Shape{7, 6}, 3);
  Arena arena;
  ASSERT_TRUE(moe.Forward(arena, x).ok());
  ASSERT_TRUE(oracle.Forward(arena, x).ok());
  EXPECT_EQ(calls, 1);
  EXPECT_DOUBLE_EQ(moe.balance_loss(), oracle.balance_loss());
  const absl::Status status = failing.Forward(arena, x).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(status.message().find("dp all-reduce timed out"), std::string::npos);
}

}  // namespace
}  // namespace tessera
