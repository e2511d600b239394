// The leave-one-out evaluation split over replicas: each replica's sums
// over its users (every R-th, in forwards of a few users, the tail of the
// evaluated users cut) add up to one process's evaluation of all of them,
// for the end-of-run function (EvaluateSplit) and for the evaluation
// during training (HstuEvaluation, as the trainer sums its metrics); and
// the errors of data.eval_dir name the field.
#include "models/hstu/evaluation.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "data/synthetic_interactions.h"
#include "runtime/base/errors.h"
#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::hstu {
namespace {

constexpr int64_t kItems = 30;
constexpr int64_t kUsers = 37;

// 37 users of 1 to 9 events (a user of one event has no event before its
// validation target: it counts for nothing), in shards of 10.
std::string MakeData(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "tessera_hstu_evaluation_" + name;
  std::filesystem::remove_all(dir);
  ClusteredInteractionsSpec spec;
  spec.num_users = kUsers;
  spec.num_items = kItems;
  spec.num_clusters = 3;
  spec.min_length = 1;
  spec.max_length = 9;
  spec.seed = 5;
  spec.users_per_shard = 10;
  EXPECT_TRUE(SynthesizeInteractions(dir, spec).ok());
  return dir;
}

RunConfig MakeConfig(const std::string& dir) {
  RunConfig config;
  HstuConfig& m = *config.mutable_hstu();
  m.set_num_items(kItems);
  m.set_embedding_dim(8);
  m.set_num_blocks(1);
  m.set_num_heads(2);
  m.set_attention_dim(2);
  m.set_linear_dim(2);
  m.set_max_len(5);
  m.set_num_time_buckets(8);
  config.mutable_data()->set_dir(dir);
  config.mutable_data()->set_eval_dir(dir);
  return config;
}

// A model with random weights, and a whole item table.
struct TestModel {
  explicit TestModel(const RunConfig& config) {
    model = *Hstu::Create(config.hstu(), store);
    store.Finalize(1);
    const auto values = cpu::test::RandomFloats(store.numel(), 2);
    std::copy(values.begin(), values.end(), store.values().data<float>());
    table = std::make_unique<parallel::RowShardedTable>(nullptr, nullptr, Hstu::kItemTable,
                                                        kItems, 8, 0.5f, 7);
  }
  ParameterStore store;
  std::unique_ptr<Hstu> model;
  std::unique_ptr<parallel::RowShardedTable> table;
};

void ExpectSameSums(const RankingSums& a, const RankingSums& b) {
  EXPECT_EQ(a.users, b.users);
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(a.hits[k], b.hits[k]) << kRankCutoffs[k];
    EXPECT_NEAR(a.ndcg[k], b.ndcg[k], 1e-12) << kRankCutoffs[k];
  }
}

TEST(HstuEvaluation, ReplicasSharesOfTheUsersAddUpToOneProcess) {
  const std::string dir = MakeData("split");
  const RunConfig config = MakeConfig(dir);
  TestModel s(config);
  parallel::RowShardedTable& table = *s.table;
  for (const Split split : {Split::kValidation, Split::kTest}) {
    for (const int64_t max_users : {int64_t{0}, int64_t{29}}) {
      EvaluationOptions one;
      one.dir = dir;
      one.max_users = max_users;
      const absl::StatusOr<RankingSums> whole = EvaluateSplit(*s.model, table, one, split);
      ASSERT_TRUE(whole.ok()) << whole.status();
      // Users with an event before the target, among the evaluated ones.
      EXPECT_GT(whole->users, 0);
      EXPECT_LT(whole->users, max_users > 0 ? max_users : kUsers);
      EXPECT_GT(whole->hits[2], 0);
      // 3 replicas of 4 users per forward: batches of 12, the last one cut.
      RankingSums summed;
      for (int r = 0; r < 3; ++r) {
        EvaluationOptions part = one;
        part.batch_users = 4;
        part.replica = r;
        part.num_replicas = 3;
        Arena arena;
        const absl::StatusOr<RankingSums> mine = EvaluateSplit(*s.model, table, part, split, &arena);
        ASSERT_TRUE(mine.ok()) << mine.status();
        summed.users += mine->users;
        for (int k = 0; k < 3; ++k) {
          summed.hits[k] += mine->hits[k];
          summed.ndcg[k] += mine->ndcg[k];
        }
      }
      ExpectSameSums(summed, *whole);
    }
  }
}

TEST(HstuEvaluation, TheTrainersSumsOverReplicasAreTheValidationSplit) {
  const std::string dir = MakeData("task");
  RunConfig config = MakeConfig(dir);
  config.mutable_train()->set_eval_samples(23);
  TestModel s(config);
  EvaluationOptions one;
  one.dir = dir;
  one.max_users = 23;
  const absl::StatusOr<RankingSums> whole =
      EvaluateSplit(*s.model, *s.table, one, Split::kValidation);
  ASSERT_TRUE(whole.ok()) << whole.status();
  std::vector<EvalMetric> summed;
  for (int r = 0; r < 2; ++r) {
    TaskOptions task;
    task.replica = r;
    task.num_replicas = 2;
    task.micro_batch = 3;
    auto eval = HstuEvaluation::Create(config, *s.model, *s.table, task);
    ASSERT_TRUE(eval.ok()) << eval.status();
    EXPECT_EQ((*eval)->num_samples(), 23);
    Arena arena;
    // Twice: each evaluation reads the split from its start.
    for (int pass = 0; pass < 2; ++pass) {
      const auto metrics = (*eval)->Evaluate(arena);
      ASSERT_TRUE(metrics.ok()) << metrics.status();
      ASSERT_EQ(metrics->size(), 6u);
      if (summed.empty()) summed.resize(6);
      for (size_t i = 0; i < 6; ++i) {
        summed[i].name = (*metrics)[i].name;
        summed[i].sum += (*metrics)[i].sum / 2;
        summed[i].count += (*metrics)[i].count / 2;
      }
    }
  }
  const std::vector<EvalMetric> expected = RankingMetrics(*whole, "val_");
  const char* names[] = {"val_hr@10", "val_ndcg@10", "val_hr@50",
                         "val_ndcg@50", "val_hr@200", "val_ndcg@200"};
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(summed[i].name, names[i]);
    EXPECT_EQ(expected[i].name, names[i]);
    EXPECT_NEAR(summed[i].sum, expected[i].sum, 1e-12) << names[i];
    EXPECT_EQ(summed[i].count, whole->users) << names[i];
  }
  // eval_samples 0: every user of the split.
  config.mutable_train()->set_eval_samples(0);
  auto all = HstuEvaluation::Create(config, *s.model, *s.table, TaskOptions{});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ((*all)->num_samples(), kUsers);
}

TEST(HstuEvaluation, ErrorsNameDataEvalDir) {
  const std::string dir = MakeData("errors");
  RunConfig config = MakeConfig(dir);
  config.mutable_hstu()->set_num_items(10);  // smaller than the data's 30 items
  TestModel s(MakeConfig(dir));
  Hstu& model = *s.model;
  // The model's table is what the split is checked against.
  RunConfig small = config;
  ParameterStore store;
  auto small_model = *Hstu::Create(small.hstu(), store);
  store.Finalize(1);
  auto eval = HstuEvaluation::Create(small, *small_model, *s.table, TaskOptions{});
  ASSERT_FALSE(eval.ok());
  EXPECT_EQ(ExitCodeFor(eval.status()), 2);
  EXPECT_NE(eval.status().message().find("smaller than data.eval_dir \"" + dir), std::string::npos)
      << eval.status();
  config = MakeConfig(dir);
  config.mutable_data()->set_eval_dir(dir + "_missing");
  eval = HstuEvaluation::Create(config, model, *s.table, TaskOptions{});
  ASSERT_FALSE(eval.ok());
  EXPECT_NE(eval.status().message().find("data.eval_dir"), std::string::npos) << eval.status();
}

}  // namespace
}  // namespace tessera::hstu
