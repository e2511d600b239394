// The HSTU layer with its heads over tp, its tokens over sp (Ulysses), and
// both, against the same layer on one process (run at np 1, 2, 3 and 4: 4
// heads): on a jagged batch (users of 1, 5, 0 and 3 tokens) with dropout,
// the output and the input gradient of each rank's tokens equal the whole
// layer's rows, each split parameter's gradient (summed over sp, as the
// data-parallel reduction sums it) equals its slice of the whole gradient,
// and the relative attention bias's gradients (each rank's heads' share,
// over tp and sp) summed equal the whole's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "models/hstu/layer.h"
#include "parallel/comm/single_rank_communicator.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera::hstu {
namespace {

using parallel::testing::MpiForTests;

constexpr int64_t kD = 8, kHeads = 4, kWidth = 2, kMaxLen = 5;
constexpr uint64_t kSeed = 11;

HstuLayerDims Dims() { return HstuLayerDims{kD, kHeads, kWidth, kWidth, kMaxLen, 8}; }

// A deterministic [rows, cols] matrix, the same on every rank.
Tensor Matrix(int64_t rows, int64_t cols, double phase, double scale = 1.0) {
  Tensor t = Tensor::Empty(DType::kF32, Shape{rows, cols});
  for (int64_t i = 0; i < t.numel(); ++i) {
    t.data<float>()[i] =
        static_cast<float>(scale * std::sin(0.61 * static_cast<double>(i) + phase));
  }
  return t;
}

Tensor Copy(const Tensor& t) {
  Tensor out = Tensor::Empty(DType::kF32, t.shape());
  std::copy_n(t.data<float>(), t.numel(), out.data<float>());
  return out;
}

// max |got - want| / max |want|.
double RelativeError(const float* got, const float* want, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(double(got[i]) - want[i]));
    scale = std::max(scale, std::abs(double(want[i])));
  }
  return diff / scale;
}

// Four users of 1, 5, 0 and 3 tokens; the query timestamps as
// HstuQueryTimestamps makes them.
struct Batch {
  std::vector<int64_t> offsets{0, 1, 6, 6, 9};
  std::vector<int64_t> timestamps{5, 1, 40, 41, 900, 100000, 7, 7, 3000};
  std::vector<int64_t> query_timestamps{9, 40, 41, 900, 100000, 100500, 7, 3000, 3100};
  JaggedTokens tokens(parallel::TokenRange mine) const {
    return {offsets.data(), 4, 9, mine, timestamps.data(), query_timestamps.data()};
  }
};

// The dropout mask over all heads [9, H dv]: 0 or 1 / 0.75.
Tensor Mask() {
  Tensor m = Matrix(9, kHeads * kWidth, 0.2);
  for (int64_t i = 0; i < m.numel(); ++i) {
    m.data<float>()[i] = m.data<float>()[i] < -0.5f ? 0.0f : 1.0f / 0.75f;
  }
  return m;
}

// The piece [local_offset, local_offset + local_shape) of a whole tensor.
std::vector<float> Slice(const float* whole, const ParamInfo& piece) {
  const Shape& g = piece.global_shape;
  const Shape& l = piece.local_shape;
  std::vector<int64_t> index(g.rank(), 0);
  std::vector<float> out;
  for (int64_t i = 0; i < l.numel(); ++i) {
    int64_t rest = i, flat = 0;
    for (int d = g.rank() - 1; d >= 0; --d) {
      index[d] = rest % l[d] + piece.local_offset[d];
      rest /= l[d];
    }
    for (int d = 0; d < g.rank(); ++d) flat = flat * g[d] + index[d];
    out.push_back(whole[flat]);
  }
  return out;
}

// Rows [range.begin, range.end) of a [rows, cols] matrix.
Tensor Rows(const Tensor& t, parallel::TokenRange range) {
  const int64_t cols = t.dim(1);
  Tensor out = Tensor::Empty(DType::kF32, Shape{range.size(), cols});
  std::copy_n(t.data<float>() + range.begin * cols, range.size() * cols, out.data<float>());
  return out;
}

struct LayerRun {
  ParameterStore store;
  std::unique_ptr<HstuLayer> layer;
  parallel::TokenRange mine;
  Tensor y, dx;  // this rank's rows
  LayerRun(parallel::Communicator& tp, parallel::Communicator& sp) {
    mine = parallel::SequenceShard(9, sp.rank(), sp.size());
    layer = *HstuLayer::Create(store, tp, sp, "layer", Dims());
    store.Finalize(kSeed);
    // Larger than the initial values, so every path matters; by name and
    // global index, so every layout holds the same weights.
    for (const ParamInfo& info : store.infos()) {
      const Tensor whole = Matrix(1, info.global_shape.numel(), 0.1 * info.name.size(), 0.4);
      const std::vector<float> piece = Slice(whole.data<float>(), info);
      std::copy(piece.begin(), piece.end(), store.values().data<float>() + info.offset);
    }
    store.ZeroGrads();
    Arena arena;
    const Batch batch;
    absl::StatusOr<Tensor> out = layer->Forward(arena, Rows(Matrix(9, kD, 0.3), mine),
                                                batch.tokens(mine), Rows(Mask(), mine));
    EXPECT_TRUE(out.ok()) << out.status();
    y = Copy(*out);
    absl::StatusOr<Tensor> din = layer->Backward(arena, Rows(Matrix(9, kD, 1.1), mine));
    EXPECT_TRUE(din.ok()) << din.status();
    dx = Copy(*din);
  }
};

// Runs the layer split over `tp` and `sp` and compares it with one process.
// `reduce` is the group the gradients sum over (sp, or the world when tp
// splits too): every gradient of tp-partial parameters, and under sp every
// gradient, is a partial sum.
void ExpectSplitEqualsWhole(parallel::Communicator& tp, parallel::Communicator& sp,
                            parallel::Communicator& tp_sp) {
  parallel::SingleRankCommunicator one_tp(HostBackend(), "tp"), one_sp(HostBackend(), "sp");
  LayerRun whole(one_tp, one_sp), split(tp, sp);
  const Tensor want_y = Rows(whole.y, split.mine), want_dx = Rows(whole.dx, split.mine);
  EXPECT_LT(RelativeError(split.y.data<float>(), want_y.data<float>(), want_y.numel()), 1e-5);
  EXPECT_LT(RelativeError(split.dx.data<float>(), want_dx.data<float>(), want_dx.numel()), 1e-5);
  Tensor grads = split.store.grads();
  for (const ParamInfo& info : split.store.infos()) {
    float* got = grads.data<float>() + info.offset;
    const bool partial = info.spec.reduce_group == ParallelSpec::ReduceGroup::kTensorDataSequence;
    parallel::Communicator* sum = partial ? &tp_sp : sp.size() > 1 ? &sp : nullptr;
    if (sum != nullptr && sum->size() > 1) {
      ASSERT_TRUE(sum->Complete(sum->AllReduce(got, info.local_shape.numel(), DType::kF32,
                                               parallel::ReduceOp::kSum))
                      .ok());
    }
    const ParamInfo& full = whole.store.info(*whole.store.Find(info.name));
    const std::vector<float> want = Slice(whole.store.grads().data<float>() + full.offset, info);
    EXPECT_LT(RelativeError(got, want.data(), info.local_shape.numel()), 1e-5) << info.name;
  }
}

TEST(HstuLayerTensorParallel, HeadsSplitOverTpEqualTheWholeLayer) {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  ASSERT_TRUE(world.ok());
  parallel::Communicator& tp = **world;
  if (kHeads % tp.size() != 0) GTEST_SKIP() << "4 heads do not split over " << tp.size();
  parallel::SingleRankCommunicator one_sp(HostBackend(), "sp");
  ExpectSplitEqualsWhole(tp, one_sp, tp);
}

// Ulysses over the jagged batch: 9 tokens over 2 or 4 ranks (users straddle
// ranks; at 4 ranks, 2 or 3 tokens each).
TEST(HstuLayerSequenceParallel, TokensSplitOverSpEqualTheWholeLayer) {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  ASSERT_TRUE(world.ok());
  parallel::Communicator& sp = **world;
  if (kHeads % sp.size() != 0) GTEST_SKIP() << "4 heads do not split over " << sp.size();
  parallel::SingleRankCommunicator one_tp(HostBackend(), "tp");
  ExpectSplitEqualsWhole(one_tp, sp, sp);
}

// tp2 x sp2 at np 4: world ranks (2 s + t) hold tp rank t of sp rank s.
TEST(HstuLayerSequenceParallel, TokensOverSpAndHeadsOverTpEqualTheWholeLayer) {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  ASSERT_TRUE(world.ok());
  if ((*world)->size() != 4) GTEST_SKIP() << "needs 4 ranks";
  const int r = (*world)->rank();
  auto tp = (*world)->CreateSubgroup({r / 2 * 2, r / 2 * 2 + 1}, "tp");
  auto sp = (*world)->CreateSubgroup({r % 2, r % 2 + 2}, "sp");
  ASSERT_TRUE(tp.ok() && sp.ok());
  ExpectSplitEqualsWhole(**tp, **sp, **world);
}

// More ranks than tokens: sp ranks with no token still take part.
TEST(HstuLayerSequenceParallel, RanksWithoutTokensJoinTheExchange) {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  ASSERT_TRUE(world.ok());
  parallel::Communicator& sp = **world;
  if (sp.size() < 2 || kHeads % sp.size() != 0) GTEST_SKIP() << "needs 2 or 4 ranks";
  // One user of one token: rank 0 (of 2) or ranks 0-2 (of 4) hold nothing.
  parallel::SingleRankCommunicator one_tp(HostBackend(), "tp");
  ParameterStore store;
  auto layer = *HstuLayer::Create(store, one_tp, sp, "layer", Dims());
  store.Finalize(kSeed);
  const std::vector<int64_t> offsets{0, 1}, timestamps{5}, query{9};
  const parallel::TokenRange mine = parallel::SequenceShard(1, sp.rank(), sp.size());
  const JaggedTokens tokens{offsets.data(), 1, 1, mine, timestamps.data(), query.data()};
  Arena arena;
  absl::StatusOr<Tensor> y = layer->Forward(arena, Rows(Matrix(1, kD, 0.3), mine), tokens, {});
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->dim(0), mine.size());
  absl::StatusOr<Tensor> dx = layer->Backward(arena, Rows(Matrix(1, kD, 1.1), mine));
  ASSERT_TRUE(dx.ok()) << dx.status();
  EXPECT_EQ(dx->dim(0), mine.size());
}

}  // namespace
}  // namespace tessera::hstu

// The folder's one main (sharded_ranking_test.cc has none).
int main(int argc, char** argv) { return tessera::parallel::testing::RunMpiTests(argc, argv); }
