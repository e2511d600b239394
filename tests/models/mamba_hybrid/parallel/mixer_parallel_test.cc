// The Mamba-2 mixer under model parallelism, against the same mixer on one
// process computing the whole sequence on every rank (run at np 1 to 4):
//  - sequence parallelism: the world is the sp group; each rank holds a
//    shard of 12 positions (shard boundaries on and off the chunks of 4 at
//    np 2, 3, 4) and passes the SSM state and the conv halo along; its
//    output and input gradient equal its rows of the whole sequence's, and
//    the parameter gradients summed over the shards equal the whole's;
//  - the same by all-to-all (mamba_sp_mode ALL_TO_ALL, np 1, 2, 4: each
//    rank scans 4/np heads in 4/np groups of the whole sequence, with its
//    slices of the per-head parameters);
//  - tensor parallelism: the world is the tp group (np 1, 2, 4: 4 heads in
//    4 groups); output and dx equal the whole's, and each rank's gradient
//    pieces equal the slices of the whole's gradients.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "models/mamba_hybrid/layout.h"
#include "models/mamba_hybrid/mixer.h"
#include "runtime/base/status.h"
#include "tests/models/mamba_hybrid/parallel/rows.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera::mamba_hybrid {
namespace {

using parallel::testing::MpiForTests;

constexpr int64_t kBatch = 2, kSeq = 12, kHidden = 16;
constexpr uint64_t kSeed = 7;

MambaHybridConfig Config(
    MambaHybridConfig::MambaSpMode sp_mode = MambaHybridConfig::STATE_PASSING) {
  MambaHybridConfig c;
  c.set_mamba_sp_mode(sp_mode);
  c.set_hidden_size(kHidden);
  c.set_num_layers(2);
  c.set_state_dim(8);
  c.set_head_dim(8);  // d_inner 32: 4 heads
  c.set_num_groups(4);
  c.set_expand(2);
  c.set_conv_width(4);
  c.set_chunk_size(4);
  return c;
}

using testing::Copy;
using testing::Matrix;
using testing::RelativeError;

// Rows [first, first + count) of every sample.
Tensor ShardRows(const Tensor& t, int64_t seq, int64_t first, int64_t count) {
  return testing::ShardRows(t, kBatch, seq, first, count);
}

struct Whole {
  ParameterStore store;
  SingleProcessLayout one;
  std::unique_ptr<Mamba2Mixer> mixer;
  Tensor y, dx;
  Whole() {
    mixer = std::make_unique<Mamba2Mixer>(store, "mixer", Config(), one.layout());
    store.Finalize(kSeed);
    store.ZeroGrads();
    Arena arena;
    y = Copy(*mixer->Forward(arena, Matrix(kBatch * kSeq, kHidden, 0.3), kBatch, kSeq));
    dx = Copy(*mixer->Backward(arena, Matrix(kBatch * kSeq, kHidden, 1.1)));
  }
};

// The world as the sp group, each rank its shard of the positions: output,
// dx and the gradients summed over the shards against the whole sequence's.
void ExpectShardsEqualTheWholeSequence(MambaHybridConfig::MambaSpMode sp_mode) {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  ASSERT_TRUE(world.ok());
  Whole whole;
  parallel::SingleRankCommunicator tp(HostBackend(), "tp");
  HybridLayout layout;
  layout.tp = &tp;
  layout.sp = world->get();
  const int64_t shard = kSeq / layout.sp_size(), first = layout.sp_rank() * shard;
  ParameterStore store;
  Mamba2Mixer mixer(store, "mixer", Config(sp_mode), layout);
  store.Finalize(kSeed);
  store.ZeroGrads();
  Arena arena;
  absl::StatusOr<Tensor> y =
      mixer.Forward(arena, ShardRows(Matrix(kBatch * kSeq, kHidden, 0.3), kSeq, first, shard),
                    kBatch, shard);
  ASSERT_TRUE(y.ok()) << y.status();
  const Tensor want_y = ShardRows(whole.y, kSeq, first, shard);
  EXPECT_LT(RelativeError(y->data<float>(), want_y.data<float>(), want_y.numel()), 1e-5);
  absl::StatusOr<Tensor> dx =
      mixer.Backward(arena, ShardRows(Matrix(kBatch * kSeq, kHidden, 1.1), kSeq, first, shard));
  ASSERT_TRUE(dx.ok()) << dx.status();
  const Tensor want_dx = ShardRows(whole.dx, kSeq, first, shard);
  EXPECT_LT(RelativeError(dx->data<float>(), want_dx.data<float>(), want_dx.numel()), 1e-5);
  // The shards' parameter gradients add up to the whole sequence's.
  Tensor grads = store.grads();
  ASSERT_TRUE(layout.sp->Complete(layout.sp->AllReduce(grads.raw(), grads.numel(), DType::kF32,
                                                       parallel::ReduceOp::kSum))
                  .ok());
  for (const ParamInfo& info : store.infos()) {
    EXPECT_LT(RelativeError(grads.data<float>() + info.offset,
                            whole.store.grads().data<float>() + info.offset,
                            info.local_shape.numel()),
              1e-5)
        << info.name;
  }
}

TEST(MixerSequenceParallel, ShardsPassingTheStateEqualTheWholeSequence) {
  ExpectShardsEqualTheWholeSequence(MambaHybridConfig::STATE_PASSING);
}

TEST(MixerSequenceParallel, HeadsExchangedByAllToAllEqualTheWholeSequence) {
  if (4 % MpiForTests()->world_size() != 0) {
    GTEST_SKIP() << "4 heads do not split over " << MpiForTests()->world_size();
  }
  ExpectShardsEqualTheWholeSequence(MambaHybridConfig::ALL_TO_ALL);
}

TEST(MixerTensorParallel, HeadsAndGroupsSplitEqualTheWholeLayer) {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  ASSERT_TRUE(world.ok());
  if (4 % (*world)->size() != 0) GTEST_SKIP() << "4 heads do not split over " << (*world)->size();
  Whole whole;
  parallel::SingleRankCommunicator sp(HostBackend(), "sp");
  HybridLayout layout;
  layout.tp = world->get();
  layout.sp = &sp;
  ParameterStore store;
  Mamba2Mixer mixer(store, "mixer", Config(), layout);
  store.Finalize(kSeed);
  store.ZeroGrads();
  Arena arena;
  absl::StatusOr<Tensor> y = mixer.Forward(arena, Matrix(kBatch * kSeq, kHidden, 0.3), kBatch, kSeq);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_LT(RelativeError(y->data<float>(), whole.y.data<float>(), whole.y.numel()), 1e-5);
  absl::StatusOr<Tensor> dx = mixer.Backward(arena, Matrix(kBatch * kSeq, kHidden, 1.1));
  ASSERT_TRUE(dx.ok()) << dx.status();
  EXPECT_LT(RelativeError(dx->data<float>(), whole.dx.data<float>(), whole.dx.numel()), 1e-5);
  // Each piece's gradient against its slice of the whole parameter's.
  for (const ParamInfo& info : store.infos()) {
    const ParamInfo& full = whole.store.info(*whole.store.Find(info.name));
    const float* all = whole.store.grads().data<float>() + full.offset;
    const int64_t cols = info.local_shape.rank() == 2 ? info.local_shape[1] : 1;
    const int64_t global_cols = full.global_shape.rank() == 2 ? full.global_shape[1] : 1;
    std::vector<float> want;
    for (int64_t r = 0; r < info.local_shape[0]; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t col0 = info.local_shape.rank() == 2 ? info.local_offset[1] : 0;
        want.push_back(all[(info.local_offset[0] + r) * global_cols + col0 + c]);
      }
    }
    EXPECT_LT(RelativeError(store.grads().data<float>() + info.offset, want.data(),
                            info.local_shape.numel()),
              1e-5)
        << info.name;
  }
}

}  // namespace
}  // namespace tessera::mamba_hybrid

int main(int argc, char** argv) { return tessera::parallel::testing::RunMpiTests(argc, argv); }
