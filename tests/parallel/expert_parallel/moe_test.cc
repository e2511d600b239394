// Expert-parallel MoE over the world as the ep group (run at np 1, 2, 4).
//
// Oracle: every rank builds the single-rank tessera::MoeLayer (same names and
// seed, hence the same initial weights) and runs it on the concatenation of
// all ranks' token blocks (each block generated from its rank alone). Each
// rank's ExpertParallelMoe output and dx must equal its rows of the reference;
// the balance loss and expert load must equal the reference's; each owned
// expert's gradients must equal the reference's (the owner sees every token
// routed to its experts); router and shared-expert gradients summed over the
// ranks must equal the reference's. Capacity drops have their own oracle
// (below): per rank, the single-rank layer on that rank's tokens.
#include "parallel/expert_parallel/moe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "runtime/base/errors.h"
#include "runtime/nn/moe.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera::parallel {
namespace {

using testing::MpiForTests;

constexpr uint64_t kSeed = 4321;
constexpr int64_t kDim = 6;

std::unique_ptr<MpiCommunicator> World() {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  TESSERA_CHECK(world.ok());
  return std::move(world).value();
}

// Rank q's block of tokens, uniform in [-1, 1), from (q, salt) alone. With
// bias_feature, column 0 is 1 (lets a test steer the router per expert).
Tensor Block(int q, int64_t rows, uint32_t salt, bool bias_feature) {
  std::mt19937 gen(1000u * static_cast<uint32_t>(q) + salt);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Tensor t = Tensor::Empty(DType::kF32, Shape{rows, kDim});
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(gen);
  if (bias_feature)
    for (int64_t r = 0; r < rows; ++r) t.data<float>()[r * kDim] = 1.0f;
  return t;
}

Tensor Concat(const std::vector<Tensor>& blocks) {
  int64_t rows = 0;
  for (const Tensor& b : blocks) rows += b.dim(0);
  Tensor out = Tensor::Empty(DType::kF32, Shape{rows, kDim});
  float* dst = out.data<float>();
  for (const Tensor& b : blocks) {
    if (b.numel() > 0) std::copy(b.data<float>(), b.data<float>() + b.numel(), dst);
    dst += b.numel();
  }
  return out;
}

// Relative tolerance 1e-5 (absolute below 1).
void ExpectNear(const float* expected, const float* actual, int64_t n, const std::string& what) {
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_NEAR(actual[i], expected[i], 1e-5 * std::max(1.0f, std::fabs(expected[i])))
        << what << " element " << i;
  }
}

struct Case {
  std::string label;
  int64_t num_experts = 4;
  int64_t top_k = 2;
  int64_t expert_hidden = 5;
  int64_t shared_hidden = 7;
  bool renormalize = false;
  float balance_coef = 0.1f;
  float loss_scale = 0.5f;
  std::function<int64_t(int q, int size)> tokens;
  std::vector<int> starved_experts;  // pushed out of every top-k via the router
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.label; }

class ExpertParallelMoeTest : public ::testing::TestWithParam<Case> {};

TEST_P(ExpertParallelMoeTest, EqualsSingleRankLayerOnConcatenatedTokens) {
  const Case& c = GetParam();
  auto ep = World();
  const int rank = ep->rank(), size = ep->size();
  MoeLayer::Options options;
  options.num_experts = c.num_experts;
  options.top_k = c.top_k;
  options.expert_hidden = c.expert_hidden;
  options.shared_expert_hidden = c.shared_hidden;
  options.balance_loss_coef = c.balance_coef;
  options.renormalize_topk = c.renormalize;
  const bool steer = !c.starved_experts.empty();

  std::vector<Tensor> xs, dys;
  std::vector<int64_t> row_begin(size + 1, 0);
  for (int q = 0; q < size; ++q) {
    const int64_t rows = c.tokens(q, size);
    xs.push_back(Block(q, rows, 1, steer));
    dys.push_back(Block(q, rows, 2, false));
    row_begin[q + 1] = row_begin[q] + rows;
  }
  const int64_t T = xs[rank].dim(0);

  // Starved experts: a large negative weight on the constant feature keeps
  // their logits far below every other expert's.
  auto starve = [&](ParameterStore& store) {
    auto id = store.Find("moe.router.weight");
    ASSERT_TRUE(id.ok()) << id.status();
    for (int e : c.starved_experts) store.param(*id).data<float>()[e * kDim] = -20.0f;
  };

  ParameterStore ref_store;
  MoeLayer ref(ref_store, "moe", kDim, options);
  ref_store.Finalize(kSeed);
  ref_store.ZeroGrads();
  starve(ref_store);
  Arena ref_arena;
  const Tensor y_ref = ref.Forward(ref_arena, Concat(xs)).value();
  const Tensor dx_ref = ref.Backward(ref_arena, Concat(dys), c.loss_scale);

  ParameterStore store;
  auto layer = ExpertParallelMoe::Create(store, *ep, "moe", kDim, options);
  ASSERT_TRUE(layer.ok()) << layer.status();
  store.Finalize(kSeed);
  store.ZeroGrads();
  starve(store);
  // Only the owned experts are registered, with the single-rank values.
  const int64_t local = c.num_experts / size;
  EXPECT_EQ((*layer)->local_experts(), local);
  EXPECT_EQ((*layer)->first_expert(), rank * local);
  int expert_params = 0;
  for (const ParamInfo& info : store.infos()) {
    auto ref_id = ref_store.Find(info.name);
    ASSERT_TRUE(ref_id.ok()) << info.name;
    const Tensor mine = store.param(*store.Find(info.name));
    ASSERT_EQ(mine.numel(), ref_store.param(*ref_id).numel()) << info.name;
    for (int64_t i = 0; i < mine.numel(); ++i)
      ASSERT_EQ(mine.data<float>()[i], ref_store.param(*ref_id).data<float>()[i]) << info.name;
    if (info.spec.kind == ParallelSpec::Kind::kExpert) {
      ++expert_params;
      EXPECT_GE(info.spec.expert_index, rank * local) << info.name;
      EXPECT_LT(info.spec.expert_index, (rank + 1) * local) << info.name;
      EXPECT_EQ(info.spec.reduce_group, ParallelSpec::ReduceGroup::kExpertData);
    }
  }
  EXPECT_EQ(expert_params, 3 * local);

  Arena arena;
  auto y = (*layer)->Forward(arena, xs[rank]);
  ASSERT_TRUE(y.ok()) << y.status();
  auto dx = (*layer)->Backward(arena, dys[rank], c.loss_scale);
  ASSERT_TRUE(dx.ok()) << dx.status();

  ASSERT_EQ(y->dim(0), T);
  ASSERT_EQ(dx->dim(0), T);
  ExpectNear(y_ref.data<float>() + row_begin[rank] * kDim, y->data<float>(), T * kDim, "y");
  ExpectNear(dx_ref.data<float>() + row_begin[rank] * kDim, dx->data<float>(), T * kDim, "dx");
  EXPECT_NEAR((*layer)->balance_loss(), ref.balance_loss(), 1e-6 * ref.balance_loss());
  ASSERT_EQ((*layer)->expert_load().size(), ref.expert_load().size());
  for (size_t e = 0; e < ref.expert_load().size(); ++e) {
    EXPECT_NEAR((*layer)->expert_load()[e], ref.expert_load()[e], 1e-12) << "expert " << e;
  }
  for (int e : c.starved_experts) EXPECT_EQ(ref.expert_load()[e], 0.0) << "expert " << e;

  for (const ParamInfo& info : store.infos()) {
    Tensor grad = store.grad(*store.Find(info.name));
    std::vector<float> g(grad.data<float>(), grad.data<float>() + grad.numel());
    if (info.spec.kind != ParallelSpec::Kind::kExpert) {
      // Dense parameters: each rank holds its tokens' share.
      ASSERT_TRUE(ep->Complete(ep->AllReduce(g.data(), g.size(), DType::kF32, ReduceOp::kSum)).ok());
    }
    ExpectNear(ref_store.grad(*ref_store.Find(info.name)).data<float>(), g.data(),
               static_cast<int64_t>(g.size()), "grad " + info.name);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, ExpertParallelMoeTest,
    ::testing::Values(
        Case{"OddTokenCountsWithSharedExpert", 4, 2, 5, 7, false, 0.1f, 0.5f,
             [](int q, int) { return int64_t{5} + 2 * q; }, {}},
        Case{"EightExpertsRenormalizedNoShared", 8, 2, 3, 0, true, 0.1f, 1.0f,
             [](int q, int) { return int64_t{9} - q; }, {}},
        Case{"TopOneOfFour", 4, 1, 4, 3, false, 0.05f, 1.0f,
             [](int q, int) { return int64_t{4} + 3 * q; }, {}},
        Case{"OneRankWithoutTokens", 8, 3, 4, 5, false, 0.1f, 0.25f,
             [](int q, int size) { return size > 1 && q == 1 ? int64_t{0} : int64_t{7} + q; },
             {}},
        // Experts 2 and 3: at ep 4 all of rank 1's experts, at ep 2 half of
        // rank 0's. No token picks them.
        Case{"ExpertsWithoutTokens", 8, 2, 4, 5, true, 0.1f, 1.0f,
             [](int q, int) { return int64_t{6} + q; }, {2, 3}}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.label; });

TEST(ExpertParallelMoeEdgeTest, NoTokensAnywhereGivesEmptyOutputsAndZeroGradients) {
  auto ep = World();
  MoeLayer::Options options;
  options.num_experts = 4;
  options.expert_hidden = 3;
  options.shared_expert_hidden = 2;
  ParameterStore store;
  auto layer = ExpertParallelMoe::Create(store, *ep, "moe", kDim, options);
  ASSERT_TRUE(layer.ok()) << layer.status();
  store.Finalize(kSeed);
  store.ZeroGrads();
  Arena arena;
  const Tensor empty = Tensor::Empty(DType::kF32, Shape{0, kDim});
  auto y = (*layer)->Forward(arena, empty);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->dim(0), 0);
  EXPECT_EQ((*layer)->balance_loss(), 0.0);
  auto dx = (*layer)->Backward(arena, empty, 1.0f);
  ASSERT_TRUE(dx.ok()) << dx.status();
  EXPECT_EQ(dx->dim(0), 0);
  const Tensor grads = store.grads();
  for (int64_t i = 0; i < grads.numel(); ++i) ASSERT_EQ(grads.data<float>()[i], 0.0f) << i;
}

// Capacity drops are per source rank: each rank's outputs, input gradients
// and drop count equal the single-rank layer with the same capacity factor
// applied to that rank's tokens alone (balance loss off: it is the only term
// that couples the ranks' router gradients). Factor 0.5 with top-2 of 4
// experts drops a good share of the assignments.
TEST(ExpertParallelMoeEdgeTest, CapacityDropsPerRankEqualSingleRankOnOwnTokens) {
  auto ep = World();
  const int rank = ep->rank();
  MoeLayer::Options options;
  options.num_experts = 4;
  options.top_k = 2;
  options.expert_hidden = 5;
  options.shared_expert_hidden = 3;
  options.balance_loss_coef = 0;
  options.capacity_factor = 0.5f;
  const Tensor x = Block(rank, 9 + rank, 3, false);
  const Tensor dy = Block(rank, 9 + rank, 4, false);

  ParameterStore ref_store;
  MoeLayer ref(ref_store, "moe", kDim, options);
  ref_store.Finalize(kSeed);
  ref_store.ZeroGrads();
  Arena ref_arena;
  const Tensor y_ref = ref.Forward(ref_arena, x).value();
  const Tensor dx_ref = ref.Backward(ref_arena, dy, 1.0f);
  EXPECT_GT(ref.dropped_assignments(), 0);

  ParameterStore store;
  auto layer = ExpertParallelMoe::Create(store, *ep, "moe", kDim, options);
  ASSERT_TRUE(layer.ok()) << layer.status();
  store.Finalize(kSeed);
  store.ZeroGrads();
  Arena arena;
  auto y = (*layer)->Forward(arena, x);
  ASSERT_TRUE(y.ok()) << y.status();
  auto dx = (*layer)->Backward(arena, dy, 1.0f);
  ASSERT_TRUE(dx.ok()) << dx.status();
  EXPECT_EQ((*layer)->dropped_assignments(), ref.dropped_assignments());
  ExpectNear(y_ref.data<float>(), y->data<float>(), x.numel(), "y");
  ExpectNear(dx_ref.data<float>(), dx->data<float>(), x.numel(), "dx");
}

TEST(ExpertParallelMoeEdgeTest, InvalidOptionsAreUsageErrorsNamingTheQuantity) {
  auto ep = World();
  MoeLayer::Options options;
  options.num_experts = 4;
  options.expert_hidden = 3;
  {
    ParameterStore store;
    MoeLayer::Options capacity = options;
    capacity.capacity_factor = -1.0f;
    auto layer = ExpertParallelMoe::Create(store, *ep, "moe", kDim, capacity);
    ASSERT_FALSE(layer.ok());
    EXPECT_EQ(ExitCodeFor(layer.status()), 2);
    EXPECT_NE(layer.status().message().find("capacity_factor -1 of moe must be >= 0"),
              absl::string_view::npos)
        << layer.status();
  }
  {
    ParameterStore store;
    MoeLayer::Options top_k = options;
    top_k.top_k = 5;
    auto layer = ExpertParallelMoe::Create(store, *ep, "moe", kDim, top_k);
    ASSERT_FALSE(layer.ok());
    EXPECT_EQ(ExitCodeFor(layer.status()), 2);
  }
  if (ep->size() > 1) {
    ParameterStore store;
    MoeLayer::Options indivisible = options;
    indivisible.num_experts = 2 * ep->size() + 1;
    auto layer = ExpertParallelMoe::Create(store, *ep, "moe", kDim, indivisible);
    ASSERT_FALSE(layer.ok());
    EXPECT_EQ(ExitCodeFor(layer.status()), 2);
    EXPECT_NE(layer.status().message().find("parallel.ep"), absl::string_view::npos);
    EXPECT_NE(layer.status().message().find("num_experts"), absl::string_view::npos);
  }
}

TEST(ExpertParallelMoeEdgeTest, BackwardWithoutForwardFails) {
  auto ep = World();
  MoeLayer::Options options;
  options.num_experts = 4;
  options.expert_hidden = 3;
  ParameterStore store;
  auto layer = ExpertParallelMoe::Create(store, *ep, "moe", kDim, options);
  ASSERT_TRUE(layer.ok()) << layer.status();
  store.Finalize(kSeed);
  Arena arena;
  auto dx = (*layer)->Backward(arena, Tensor::Empty(DType::kF32, Shape{3, kDim}), 1.0f);
  EXPECT_FALSE(dx.ok());
  auto bad = (*layer)->Forward(arena, Tensor::Empty(DType::kF32, Shape{3, kDim + 1}));
  EXPECT_FALSE(bad.ok());
}

}  // namespace
}  // namespace tessera::parallel

int main(int argc, char** argv) { return tessera::parallel::testing::RunMpiTests(argc, argv); }
