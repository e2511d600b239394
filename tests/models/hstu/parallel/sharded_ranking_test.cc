// The full-ranking evaluation against an item table row-sharded over the
// world (np 1 to 4: 30 rows in blocks of 30, 15, 10 and 8, the last rank
// shorter), each rank ranking every R-th user in forwards of 4 (a rank
// with no user in the last forward still joins the exchanges): the hits,
// NDCG sums and users summed over the ranks equal one process ranking every
// user against the whole table — both splits, all users and the first 29.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "data/synthetic_interactions.h"
#include "models/hstu/evaluation.h"
#include "tests/parallel/comm/mpi_test_main.h"
#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::hstu {
namespace {

using parallel::testing::MpiForTests;

constexpr int64_t kItems = 30, kDim = 8;

// 37 users of 1 to 9 events, written by each rank to a folder of its own.
std::string MakeData(int rank) {
  const std::string dir =
      ::testing::TempDir() + "tessera_hstu_sharded_ranking_" + std::to_string(rank);
  std::filesystem::remove_all(dir);
  ClusteredInteractionsSpec spec;
  spec.num_users = 37;
  spec.num_items = kItems;
  spec.num_clusters = 3;
  spec.min_length = 1;
  spec.max_length = 9;
  spec.seed = 5;
  spec.users_per_shard = 10;
  EXPECT_TRUE(SynthesizeInteractions(dir, spec).ok());
  return dir;
}

HstuConfig Config() {
  HstuConfig m;
  m.set_num_items(kItems);
  m.set_embedding_dim(kDim);
  m.set_num_blocks(1);
  m.set_num_heads(2);
  m.set_attention_dim(2);
  m.set_linear_dim(2);
  m.set_max_len(5);
  m.set_num_time_buckets(8);
  return m;
}

TEST(ShardedRanking, TheShardsRanksEqualOneProcessRankingTheWholeTable) {
  auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
  ASSERT_TRUE(world.ok());
  parallel::Communicator& group = **world;
  const std::string dir = MakeData(group.rank());
  ParameterStore store;
  std::unique_ptr<Hstu> model = *Hstu::Create(Config(), store);
  store.Finalize(1);
  const auto values = cpu::test::RandomFloats(store.numel(), 2);
  std::copy(values.begin(), values.end(), store.values().data<float>());
  // The same initial rows, whole and in shards.
  parallel::RowShardedTable whole(nullptr, nullptr, Hstu::kItemTable, kItems, kDim, 0.5f, 7);
  parallel::RowShardedTable shards(&group, nullptr, Hstu::kItemTable, kItems, kDim, 0.5f, 7);
  for (const Split split : {Split::kValidation, Split::kTest}) {
    for (const int64_t max_users : {int64_t{0}, int64_t{29}}) {
      EvaluationOptions one;
      one.dir = dir;
      one.max_users = max_users;
      const absl::StatusOr<RankingSums> want = EvaluateSplit(*model, whole, one, split);
      ASSERT_TRUE(want.ok()) << want.status();
      EXPECT_GT(want->hits[2], 0);
      EvaluationOptions mine = one;
      mine.batch_users = 4;
      mine.replica = group.rank();
      mine.num_replicas = group.size();
      const absl::StatusOr<RankingSums> got = EvaluateSplit(*model, shards, mine, split);
      ASSERT_TRUE(got.ok()) << got.status();
      std::vector<double> mine_sums = {got->users};
      for (int k = 0; k < 3; ++k) {
        mine_sums.push_back(got->hits[k]);
        mine_sums.push_back(got->ndcg[k]);
      }
      std::vector<double> all(7 * group.size()), sums(7, 0.0);
      ASSERT_TRUE(group
                      .Complete(group.AllGather(mine_sums.data(), all.data(), 7 * sizeof(double),
                                                DType::kU8))
                      .ok());
      for (int r = 0; r < group.size(); ++r) {
        for (int i = 0; i < 7; ++i) sums[i] += all[7 * r + i];
      }
      EXPECT_EQ(sums[0], want->users);
      for (int k = 0; k < 3; ++k) {
        EXPECT_EQ(sums[1 + 2 * k], want->hits[k]) << "HR@" << kRankCutoffs[k];
        EXPECT_NEAR(sums[2 + 2 * k], want->ndcg[k], 1e-12) << "NDCG@" << kRankCutoffs[k];
      }
    }
  }
}

}  // namespace
}  // namespace tessera::hstu
