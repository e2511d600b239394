// Scoring every item for users' histories: the HSTU output at a user's last
// position against every row of the item table, by cosine similarity (the
// training loss's similarity), for full-ranking evaluation and
// `tessera recommend`.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "models/hstu/model.h"
#include "models/hstu/ranking.h"

namespace tessera::hstu {

// One user's query: its history (oldest first) and the time of the item to
// predict.
struct UserHistory {
  std::span<const int64_t> items, timestamps;
  int64_t next_timestamp = 0;
};

// scores [users, num_items] on the host: cos(output at the last position of
// each history (its last max_len events), item row), no dropout. `table`:
// the whole item table [num_items, D] (host memory). Every history must hold
// at least one event.
std::vector<float> ScoreItems(Hstu& model, Arena& arena, const float* table,
                              std::span<const UserHistory> users);

// Which event of each history is the held-out target: leave-one-out's
// validation (the second-to-last event) or test (the last).
enum class Split { kValidation, kTest };

// Ranks each user's target (events [0, target) are the history and are
// excluded from the candidates) and adds it to `sums`. A user without an
// event before its target counts for nothing. `offsets`, `items`,
// `timestamps`: a jagged batch of whole histories (InteractionBatch).
void RankTargets(Hstu& model, Arena& arena, const float* table, std::span<const int64_t> offsets,
                 const int64_t* items, const int64_t* timestamps, Split split,
                 RankingSums& sums);

// The k best items for a history, best first, its own items excluded.
std::vector<int64_t> TopItems(std::span<const float> scores, std::span<const int64_t> history,
                              int64_t k);

}  // namespace tessera::hstu
