// Scoring every item for users' histories: the HSTU output at a user's last
// position against every row of the item table, by cosine similarity (the
// training loss's similarity), for full-ranking evaluation and
// `tessera recommend`.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "models/hstu/model.h"
#include "models/hstu/ranking.h"
#include "parallel/embedding/row_sharded_table.h"

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
absl::StatusOr<std::vector<float>> ScoreItems(Hstu& model, Arena& arena, const float* table,
                                              std::span<const UserHistory> users);

// The histories as one jagged batch (each cut to its last max_len events).
HstuBatch HistoryBatch(const Hstu& model, std::span<const UserHistory> users);

// Outputs at users' last positions: `rows` [users.size(), D] on the host,
// row i that of user users[i] (an index into the batch).
struct LastRows {
  std::vector<float> rows;
  std::vector<int64_t> users;
};
// The outputs at the last position of every user whose last token is this
// rank's (model.Tokens(batch): all users without sp; under sp each user on
// exactly one rank), given `inputs` [n, D], the rows of this rank's tokens'
// items (the arena's memory). A batch of no users runs nothing; otherwise a
// collective over the model's tp and sp groups.
absl::StatusOr<LastRows> LastOutputs(Hstu& model, Arena& arena, const HstuBatch& batch,
                                     const Tensor& inputs);

// [Q, num_rows] on the host: cos(query, row) for `queries` [Q, D] (host) and
// `rows` [num_rows, D] in memory the arena's backend reads (a whole table or
// one rank's rows of it: RowShardedTable::RowsOn), computed as the loss's
// similarity is (rows scaled to unit length, one GEMM).
std::vector<float> CosineScores(Arena& arena, std::span<const float> queries, const float* rows,
                                int64_t num_rows, int64_t dim);

// The rows of `ids` [ids.size(), D] in the arena's memory, looked up from
// the (possibly row-sharded) item table: each distinct id's row once (from
// the device-resident table's rows, or copied over from the host table's),
// gathered on the arena's device. Collective over the table's group.
absl::StatusOr<Tensor> LookupRows(parallel::RowShardedTable& table, Arena& arena,
                                  std::span<const int64_t> ids);

// Which event of each history is the held-out target: leave-one-out's
// validation (the second-to-last event) or test (the last).
enum class Split { kValidation, kTest };

// The k best items for a history, best first, its own items excluded.
std::vector<int64_t> TopItems(std::span<const float> scores, std::span<const int64_t> history,
                              int64_t k);

}  // namespace tessera::hstu
