// Attention with rotary position embeddings under sequence parallelism,
// against the same layer on one process computing the whole sequence (run
// at np 1 to 4; np 3 does not split the 4 heads and skips): the world is the
// sp group, each rank holds a shard of the 12 positions, RoPE rotates its
// rows at their positions in the whole sequence and Ulysses attends over
// all of them. Each rank's output and input gradient equal its rows of the
// whole sequence's, and the parameter gradients summed over the shards
// equal the whole's.
#include <gtest/gtest.h>

#include <memory>

#include "absl/time/time.h"
#include "models/mamba_hybrid/attention.h"
#include "models/mamba_hybrid/layout.h"
#include "tests/models/mamba_hybrid/parallel/rows.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera::mamba_hybrid {
namespace {

using parallel::testing::MpiForTests;
using testing::Copy;
using testing::Matrix;
using testing::RelativeError;
using testing::ShardRows;

constexpr int64_t kBatch = 2, kSeq = 12, kHidden = 16;
constexpr uint64_t kSeed = 11;

MambaHybridConfig RopeConfig() {
  MambaHybridConfig c;
  c.set_hidden_size(kHidden);
  c.set_num_layers(2);
  c.set_num_heads(4);  // head dim 4
  c.set_num_query_groups(2);
  c.set_rope_base(30);
  return c;
}

TEST(AttentionSequenceParallel, RopeShardsAtTheirGlobalPositionsEqualTheWholeSequence) {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  ASSERT_TRUE(world.ok());
  if (4 % (*world)->size() != 0) GTEST_SKIP() << "4 heads do not split over " << (*world)->size();
  const Tensor x = Matrix(kBatch * kSeq, kHidden, 0.3), dy = Matrix(kBatch * kSeq, kHidden, 1.1);
  // The whole sequence on one process.
  ParameterStore whole_store;
  SingleProcessLayout one;
  CausalSelfAttention whole(whole_store, "attn", RopeConfig(), one.layout());
  whole_store.Finalize(kSeed);
  whole_store.ZeroGrads();
  Arena whole_arena;
  const Tensor want_y = Copy(*whole.Forward(whole_arena, x, kBatch, kSeq));
  const Tensor want_dx = Copy(*whole.Backward(whole_arena, dy));

  parallel::SingleRankCommunicator tp(HostBackend(), "tp");
  HybridLayout layout;
  layout.tp = &tp;
  layout.sp = world->get();
  const int64_t shard = kSeq / layout.sp_size(), first = layout.sp_rank() * shard;
  ParameterStore store;
  CausalSelfAttention attention(store, "attn", RopeConfig(), layout);
  store.Finalize(kSeed);
  store.ZeroGrads();
  Arena arena;
  absl::StatusOr<Tensor> y =
      attention.Forward(arena, ShardRows(x, kBatch, kSeq, first, shard), kBatch, shard);
  ASSERT_TRUE(y.ok()) << y.status();
  const Tensor mine_y = ShardRows(want_y, kBatch, kSeq, first, shard);
  EXPECT_LT(RelativeError(y->data<float>(), mine_y.data<float>(), mine_y.numel()), 1e-5);
  absl::StatusOr<Tensor> dx = attention.Backward(arena, ShardRows(dy, kBatch, kSeq, first, shard));
  ASSERT_TRUE(dx.ok()) << dx.status();
  const Tensor mine_dx = ShardRows(want_dx, kBatch, kSeq, first, shard);
  EXPECT_LT(RelativeError(dx->data<float>(), mine_dx.data<float>(), mine_dx.numel()), 1e-5);
  Tensor grads = store.grads();
  ASSERT_TRUE(layout.sp->Complete(layout.sp->AllReduce(grads.raw(), grads.numel(), DType::kF32,
                                                       parallel::ReduceOp::kSum))
                  .ok());
  for (const ParamInfo& info : store.infos()) {
    EXPECT_LT(RelativeError(grads.data<float>() + info.offset,
                            whole_store.grads().data<float>() + info.offset,
                            info.local_shape.numel()),
              1e-5)
        << info.name;
  }
}

}  // namespace
}  // namespace tessera::mamba_hybrid
