#include "models/hstu/evaluation.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "data/interaction_reader.h"
#include "runtime/base/status.h"

namespace tessera::hstu {

absl::StatusOr<RankingSums> EvaluateSplit(Hstu& model, parallel::RowShardedTable& table,
                                          const EvaluationOptions& options, Split split,
                                          Arena* arena) {
  InteractionReaderOptions reader_options;
  reader_options.dir = options.dir;
  reader_options.field = options.field;
  reader_options.global_batch = options.batch_users * options.num_replicas;
  reader_options.replica = options.replica;
  reader_options.num_replicas = options.num_replicas;
  reader_options.prefetch = options.prefetch;
  reader_options.shuffle = false;
  reader_options.num_items = model.num_items();  // every event's id is checked against it
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<InteractionReader> reader,
                           InteractionReader::Open(reader_options));
  const int64_t available = reader->num_samples();
  const int64_t users =
      options.max_users > 0 ? std::min(options.max_users, available) : available;
  const int64_t global = reader_options.global_batch;
  RankingSums sums;
  std::unique_ptr<Arena> own;
  if (arena == nullptr) {
    own = std::make_unique<Arena>(model.store().backend());
    arena = own.get();
  }
  for (int64_t first = 0; first < users; first += global) {
    TESSERA_ASSIGN_OR_RETURN(const InteractionBatch batch, reader->Next());
    // Index order: this replica's row k is user first + k * R + r; rows past
    // the evaluated users (the sampler wraps into the next epoch, more than
    // once when a batch holds more than the whole split) are cut.
    int64_t rows = 0;
    while (rows < static_cast<int64_t>(batch.indices.size()) &&
           batch.indices[rows] == first + rows * options.num_replicas + options.replica &&
           batch.indices[rows] < users) {
      ++rows;
    }
    const int64_t* offsets = batch.offsets.data<int64_t>();
    TESSERA_RETURN_IF_ERROR(RankTargets(model, *arena, table,
                                        {offsets, static_cast<size_t>(rows + 1)},
                                        batch.item_ids.data<int64_t>(),
                                        batch.timestamps.data<int64_t>(), split, sums));
    arena->Reset();
  }
  return sums;
}

std::string RankingJsonFields(const RankingSums& sums, const std::string& prefix) {
  std::string out;
  const double users = std::max(1.0, sums.users);
  for (int k = 0; k < 3; ++k) {
    absl::StrAppend(&out, absl::StrFormat("\"%shr@%d\":%.6f,\"%sndcg@%d\":%.6f,", prefix,
                                          kRankCutoffs[k], sums.hits[k] / users, prefix,
                                          kRankCutoffs[k], sums.ndcg[k] / users));
  }
  absl::StrAppend(&out, absl::StrFormat("\"%susers\":%.0f", prefix, sums.users));
  return out;
}

std::vector<EvalMetric> RankingMetrics(const RankingSums& sums, const std::string& prefix) {
  std::vector<EvalMetric> metrics;
  for (int k = 0; k < 3; ++k) {
    metrics.push_back({absl::StrCat(prefix, "hr@", kRankCutoffs[k]), sums.hits[k], sums.users});
    metrics.push_back({absl::StrCat(prefix, "ndcg@", kRankCutoffs[k]), sums.ndcg[k], sums.users});
  }
  return metrics;
}

absl::StatusOr<std::unique_ptr<HstuEvaluation>> HstuEvaluation::Create(
    const RunConfig& config, Hstu& model, parallel::RowShardedTable& table,
    const TaskOptions& task) {
  EvaluationOptions options;
  options.dir = config.data().eval_dir();
  options.field = "data.eval_dir";
  options.batch_users = task.micro_batch;
  options.prefetch = config.data().prefetch();
  options.replica = task.replica;
  options.num_replicas = task.num_replicas;
  // Opened here only to check the split before the first step: the schema,
  // its num_items against the model's table, at least one user.
  InteractionReaderOptions check;
  check.dir = options.dir;
  check.field = options.field;
  check.global_batch = options.batch_users * options.num_replicas;
  check.replica = options.replica;
  check.num_replicas = options.num_replicas;
  check.prefetch = 1;
  check.shuffle = false;
  check.num_items = model.num_items();
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<InteractionReader> reader,
                           InteractionReader::Open(check));
  const int64_t available = reader->num_samples();
  const int64_t wanted = config.train().eval_samples();
  const int64_t users = wanted > 0 ? std::min(wanted, available) : available;
  options.max_users = users;
  return std::unique_ptr<HstuEvaluation>(
      new HstuEvaluation(model, table, std::move(options), users));
}

std::vector<std::string> HstuEvaluation::metric_names() const {
  std::vector<std::string> names;
  for (const EvalMetric& metric : RankingMetrics(RankingSums(), "val_")) names.push_back(metric.name);
  return names;
}

absl::StatusOr<std::vector<EvalMetric>> HstuEvaluation::Evaluate(Arena& arena) {
  TESSERA_ASSIGN_OR_RETURN(const RankingSums sums,
                           EvaluateSplit(model_, table_, options_, Split::kValidation, &arena));
  return RankingMetrics(sums, "val_");
}

}  // namespace tessera::hstu
