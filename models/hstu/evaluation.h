// Leave-one-out evaluation of an HSTU over every user of an interactions
// data set: the validation split ranks each user's second-to-last event
// given the events before it, the test split its last event given all the
// others; full ranking over every item, the user's history excluded
// (ranking.h). Users are read in index order; a user whose target has no
// event before it counts for nothing.
//
// Two callers: the end of a run (HstuModel::FinishRun, both splits of
// data.dir) and the evaluation during training (HstuEvaluation below, the
// validation split of data.eval_dir every train.eval_every steps), both
// with the users split over the data-parallel replicas and the items
// ranked against the row-sharded table where it lies (sharded_ranking.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/hstu/scoring.h"
#include "models/hstu/sharded_ranking.h"
#include "models/registry.h"
#include "parallel/embedding/row_sharded_table.h"
#include "runtime/config/config.pb.h"
#include "runtime/train/eval_task.h"

namespace tessera::hstu {

struct EvaluationOptions {
  std::string dir;                // an interactions data set
  std::string field = "data.dir";  // the config field it came from (messages)
  int64_t batch_users = 128;      // users per forward
  int64_t max_users = 0;          // the first max_users users; 0: all
  int prefetch = 4;
  int replica = 0, num_replicas = 1;  // this replica takes every R-th user
};

// `table`: the item table, row-sharded over its group. Every replica runs
// the same number of rankings (ceil(users / (batch_users * R))), each a
// collective over the table's group (RankTargets); a replica whose share of
// a batch holds no user skips its forward but not the collectives. `arena`
// (null: one of its own) is reset after each ranking.
absl::StatusOr<RankingSums> EvaluateSplit(Hstu& model, parallel::RowShardedTable& table,
                                          const EvaluationOptions& options, Split split,
                                          Arena* arena = nullptr);

// `"<prefix>hr@10":…,"<prefix>ndcg@10":…, …` for every cut-off, as means
// over the users, and `"<prefix>users":N`.
std::string RankingJsonFields(const RankingSums& sums, const std::string& prefix);

// The evaluation during training (runtime/train/eval_task.h): the
// validation split (each user's second-to-last event) of the first
// train.eval_samples users of data.eval_dir (all when 0), this replica
// taking every R-th user in forwards of options.micro_batch users. For
// leave-one-out data.eval_dir is normally data.dir itself: training never
// sees a user's last model.hstu.holdout events, so with holdout >= 2 the
// validation target is held out of training (config_rules.h refuses
// holdout < 2 on the training data). It ranks with EvaluateSplit, as the
// end-of-run evaluation does, so both share one mathematics.
class HstuEvaluation : public EvalTask {
 public:
  // Opens data.eval_dir once to check it (schema, num_items against
  // model.hstu.num_items) and count its users.
  static absl::StatusOr<std::unique_ptr<HstuEvaluation>> Create(const RunConfig& config,
                                                                Hstu& model,
                                                                parallel::RowShardedTable& table,
                                                                const TaskOptions& options);

  // Sums over this replica's users: "val_hr@K" (hits) and "val_ndcg@K"
  // for K = 10, 50, 200, each counted over the users that have an event
  // before their target. Collective over the table's group.
  absl::StatusOr<std::vector<EvalMetric>> Evaluate(Arena& arena) override;
  int64_t num_samples() const override { return users_; }
  std::vector<std::string> metric_names() const override;

 private:
  HstuEvaluation(Hstu& model, parallel::RowShardedTable& table, EvaluationOptions options,
                 int64_t users)
      : model_(model), table_(table), options_(std::move(options)), users_(users) {}

  Hstu& model_;
  parallel::RowShardedTable& table_;
  EvaluationOptions options_;
  int64_t users_;
};

// The metrics of `sums` as EvalMetric sums and counts, named as
// RankingJsonFields names them ("<prefix>hr@10", "<prefix>ndcg@10", …).
std::vector<EvalMetric> RankingMetrics(const RankingSums& sums, const std::string& prefix);

}  // namespace tessera::hstu
