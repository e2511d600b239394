#include "models/hstu/evaluation.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "data/interaction_reader.h"
#include "runtime/base/status.h"

namespace tessera::hstu {

absl::StatusOr<RankingSums> EvaluateSplit(Hstu& model, const float* table,
                                          const EvaluationOptions& options, Split split) {
  InteractionReaderOptions reader_options;
  reader_options.dir = options.dir;
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
  Arena arena(model.store().backend());
  for (int64_t first = 0; first < users; first += global) {
    TESSERA_ASSIGN_OR_RETURN(const InteractionBatch batch, reader->Next());
    // Index order: this replica's row k is user first + k * R + r; rows past
    // the evaluated users (the sampler wraps into the next epoch) are cut.
    int64_t rows = 0;
    while (rows < static_cast<int64_t>(batch.indices.size()) && batch.indices[rows] < users &&
           batch.indices[rows] >= first) {
      ++rows;
    }
    const int64_t* offsets = batch.offsets.data<int64_t>();
    RankTargets(model, arena, table, {offsets, static_cast<size_t>(rows + 1)},
                batch.item_ids.data<int64_t>(), batch.timestamps.data<int64_t>(), split, sums);
    arena.Reset();
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

}  // namespace tessera::hstu
