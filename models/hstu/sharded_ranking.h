// Full-ranking evaluation against the item table row-sharded over its group
// (parallel/embedding/row_sharded_table.h), without gathering the table.
//
// The target's rank (ranking.h) is a count: the candidate items scoring
// strictly higher than the target. That count is a sum over the shards, so
// each rank needs only the users' query vectors (D floats each), their
// targets and histories, and the target's score, never the other ranks'
// rows:
//   1. every rank of the group all-gathers the group's queries, targets and
//      histories (this forward's users of every rank);
//   2. each rank scores every gathered query against its own rows with the
//      one-process similarity (CosineScores);
//   3. the owner of each target contributes its score (an all-reduce of one
//      float per user, every other rank adding 0);
//   4. each rank counts its rows outside the user's history scoring strictly
//      higher, and an all-reduce sums the counts (one int64 per user).
// This is exact: the same comparisons of the same scores as one process
// ranking the whole table (ties in the target's favour), not a merge of
// top-K lists. Per rank it holds its rows' unit copy [rows / P, D] and the
// scores [P * users per forward, rows / P] instead of a whole table.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "models/hstu/ranking.h"
#include "models/hstu/scoring.h"
#include "parallel/embedding/row_sharded_table.h"

namespace tessera::hstu {

// Ranks each user's target (events [0, target) are the history and are
// excluded from the candidates) and adds it to `sums`. A user without an
// event before its target counts for nothing. `offsets`, `items`,
// `timestamps`: this rank's jagged batch of whole histories
// (InteractionBatch), any number of users, none allowed. Collective over the
// table's group (the input rows' Lookup and the exchanges above): every rank
// of the group calls it the same number of times, and under tensor
// parallelism the tp ranks of a replica pass the same users.
absl::Status RankTargets(Hstu& model, Arena& arena, parallel::RowShardedTable& table,
                         std::span<const int64_t> offsets, const int64_t* items,
                         const int64_t* timestamps, Split split, RankingSums& sums);

}  // namespace tessera::hstu
