// The parameter store: aligned flat layout, and initial values that depend on
// (seed, name, element) only.
#include "runtime/nn/parameter.h"

#include "runtime/kernels/cpu/gemm_bf16.h"

#include <gtest/gtest.h>

#include <bit>
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

namespace tessera {
namespace {

TEST(ParameterStore, BucketsFollowBackwardOrderNeverMixGroupsAndDivideIntoShards) {
  ParameterStore store;
  store.Register("a", Shape{10}, ParamInit::Ones(), true);
  store.Register("b", Shape{40}, ParamInit::Ones(), true);
  store.Register("e0", Shape{30}, ParamInit::Ones(), true, ParallelSpec::Expert(0));
  store.Register("e1", Shape{30}, ParamInit::Ones(), true, ParallelSpec::Expert(1));
  store.Register("c", Shape{50}, ParamInit::Ones(), true);
  store.Register("d", Shape{20}, ParamInit::Ones(), true);
  ParameterLayout layout;
  layout.bucket_elements = 80;
  layout.shard_multiple = 3;
  store.Finalize(1, layout);
  const auto& buckets = store.buckets();
  // Backwards: {c, d} (70), {e0, e1} (expert group), {b} then {a} (10 + 40 <= 80: one bucket).
  ASSERT_EQ(buckets.size(), 3u);
  EXPECT_EQ(buckets[0].first_param, 0);
  EXPECT_EQ(buckets[0].end_param, 2);
  EXPECT_EQ(buckets[1].first_param, 2);
  EXPECT_EQ(buckets[1].end_param, 4);
  EXPECT_EQ(buckets[1].group, ParallelSpec::ReduceGroup::kExpertData);
  EXPECT_EQ(buckets[2].first_param, 4);
  EXPECT_EQ(buckets[2].end_param, 6);
  int64_t expected_begin = 0;
  for (const GradBucket& bucket : buckets) {
    EXPECT_EQ(bucket.begin, expected_begin);
    EXPECT_EQ(bucket.size() % (16 * 3), 0);
    for (int id = bucket.first_param; id < bucket.end_param; ++id) {
      const ParamInfo& info = store.info(id);
      EXPECT_GE(info.offset, bucket.begin);
      EXPECT_LE(info.offset + info.local_shape.numel(), bucket.end);
    }
    expected_begin = bucket.end;
  }
  EXPECT_EQ(expected_begin, store.numel());
}

TEST(ParameterStore, DefaultLayoutIsOneBucketPerGroupRun) {
  ParameterStore store;
  store.Register("a", Shape{10}, ParamInit::Ones(), true);
  store.Register("b", Shape{40}, ParamInit::Ones(), true);
  store.Finalize(1);
  ASSERT_EQ(store.buckets().size(), 1u);
  EXPECT_EQ(store.buckets()[0].end, store.numel());
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

TEST(ParameterStore, APieceStartsAsItsSliceOfTheWholeParameter) {
  ParameterStore whole, piece;
  whole.Register("w", Shape{4, 6}, ParamInit::Normal(1.0f), true);
  ParallelSpec spec;
  spec.kind = ParallelSpec::Kind::kSplit;
  spec.split_dim = 1;
  piece.RegisterPiece("w", Shape{4, 6}, Shape{4, 2}, {0, 4}, ParamInit::Normal(1.0f), true, spec);
  whole.Finalize(5);
  piece.Finalize(5);
  const float* w = whole.param(0).data<float>();
  const float* p = piece.param(0).data<float>();
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 2; ++c) EXPECT_EQ(p[r * 2 + c], w[r * 6 + 4 + c]);
  EXPECT_EQ(piece.info(0).global_shape, (Shape{4, 6}));
}

// ScopedBf16Values: in a bf16 run the outermost scope rounds every value to
// bf16 once (what the bf16 GEMMs would multiply); param_bf16 is null outside
// the scopes and in an fp32 run; a new scope sees values changed in between.
TEST(ParameterStore, ScopedBf16ValuesHoldTheRoundedValuesOnlyInsideTheScope) {
  ParameterStore store;
  const auto w = store.Register("w", Shape{5, 7}, ParamInit::Normal(1.0f), true);
  const auto b = store.Register("b", Shape{3}, ParamInit::Normal(1.0f), false);
  store.Finalize(3);
  auto expect_copies = [&](const char* what) {
    for (auto id : {w, b}) {
      const uint16_t* bits = store.param_bf16(id);
      ASSERT_NE(bits, nullptr) << what;
      const Tensor p = store.param(id);
      for (int64_t i = 0; i < p.numel(); ++i) {
        const float got = std::bit_cast<float>(uint32_t{bits[i]} << 16);
        ASSERT_EQ(got, cpu::RoundToBf16(p.data<float>()[i])) << what << " " << id << "[" << i << "]";
      }
    }
  };
  {
    ParameterStore::ScopedBf16Values fp32_run(store);  // the backend computes in fp32
    EXPECT_EQ(store.param_bf16(w), nullptr);
  }
  ScopedGemmPrecision bf16(store.backend(), MathPrecision::kBf16);
  EXPECT_EQ(store.param_bf16(w), nullptr);
  {
    ParameterStore::ScopedBf16Values step(store);
    expect_copies("first scope");
    {
      ParameterStore::ScopedBf16Values nested(store);
      expect_copies("nested scope");
    }
    EXPECT_NE(store.param_bf16(w), nullptr) << "the inner scope dropped the outer one's copies";
  }
  EXPECT_EQ(store.param_bf16(w), nullptr);
  store.param(w).data<float>()[4] = 1.2345678f;  // an optimizer step between two scopes
  ParameterStore::ScopedBf16Values next(store);
  expect_copies("after an update");
  EXPECT_EQ(std::bit_cast<float>(uint32_t{store.param_bf16(w)[4]} << 16), 1.234375f);
}

}  // namespace
}  // namespace tessera
