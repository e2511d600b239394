#include "models/hstu/sharded_ranking.h"

#include <algorithm>
#include <vector>

#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::hstu {
namespace {

// The users of every rank of the group, in rank order.
struct GroupUsers {
  std::vector<float> queries;       // [users, D]
  std::vector<int64_t> targets;     // [users]
  std::vector<int64_t> history;     // every user's history, concatenated
  std::vector<int64_t> offsets{0};  // [users + 1] into history
  int64_t first_mine = 0;           // index of this rank's first user
};

// All-gathers `values` (any count per rank) over `group`: every rank's
// values in rank order, and where this rank's begin.
template <typename T>
absl::StatusOr<std::vector<T>> GatherVarying(parallel::Communicator& group,
                                             const std::vector<T>& values, int64_t* mine_at) {
  const int size = group.size();
  const int64_t count = static_cast<int64_t>(values.size());
  std::vector<int64_t> counts(size);
  TESSERA_RETURN_IF_ERROR(group.Complete(group.AllGather(&count, counts.data(), 1, DType::kI64)));
  const int64_t most = *std::max_element(counts.begin(), counts.end());
  std::vector<T> padded(values);
  padded.resize(static_cast<size_t>(most));
  std::vector<T> all(static_cast<size_t>(most * size));
  if (most > 0) {
    TESSERA_RETURN_IF_ERROR(group.Complete(
        group.AllGather(padded.data(), all.data(), static_cast<size_t>(most), DTypeOf<T>())));
  }
  std::vector<T> out;
  for (int r = 0; r < size; ++r) {
    if (r == group.rank()) *mine_at = static_cast<int64_t>(out.size());
    out.insert(out.end(), all.begin() + r * most, all.begin() + r * most + counts[r]);
  }
  return out;
}

absl::StatusOr<GroupUsers> GatherUsers(parallel::Communicator* group, std::vector<float> queries,
                                       std::vector<int64_t> targets,
                                       std::span<const UserHistory> users, int64_t dim) {
  // Per user: its history length, then the history.
  std::vector<int64_t> histories;
  for (const UserHistory& user : users) {
    histories.push_back(static_cast<int64_t>(user.items.size()));
    histories.insert(histories.end(), user.items.begin(), user.items.end());
  }
  GroupUsers all;
  if (group != nullptr && group->size() > 1) {
    int64_t at = 0;
    TESSERA_ASSIGN_OR_RETURN(queries, GatherVarying(*group, queries, &at));
    TESSERA_ASSIGN_OR_RETURN(targets, GatherVarying(*group, targets, &all.first_mine));
    TESSERA_ASSIGN_OR_RETURN(histories, GatherVarying(*group, histories, &at));
  }
  all.queries = std::move(queries);
  all.targets = std::move(targets);
  TESSERA_CHECK(static_cast<int64_t>(all.queries.size()) ==
                static_cast<int64_t>(all.targets.size()) * dim);
  for (size_t at = 0; at < histories.size(); at += 1 + histories[at]) {
    all.history.insert(all.history.end(), histories.begin() + at + 1,
                       histories.begin() + at + 1 + histories[at]);
    all.offsets.push_back(static_cast<int64_t>(all.history.size()));
  }
  return all;
}

// Sums `values` over the group (in place; nothing alone).
template <typename T>
absl::Status SumOverGroup(parallel::Communicator* group, std::vector<T>& values) {
  if (group == nullptr || values.empty()) return absl::OkStatus();
  return group->Complete(
      group->AllReduce(values.data(), values.size(), DTypeOf<T>(), parallel::ReduceOp::kSum));
}

// Each gathered user's rank: the items outside its history scoring strictly
// higher than its target, counted on this rank's rows and summed.
absl::StatusOr<std::vector<int64_t>> GroupRanks(parallel::RowShardedTable& table,
                                                const GroupUsers& all,
                                                const std::vector<float>& scores) {
  const int64_t first = table.first_row(), rows = table.end_row() - first;
  const size_t users = all.targets.size();
  std::vector<float> target_scores(users, 0.0f);  // the owner's; 0 from the others
  for (size_t u = 0; u < users; ++u) {
    const int64_t t = all.targets[u] - first;
    if (t >= 0 && t < rows) target_scores[u] = scores[u * rows + t];
  }
  TESSERA_RETURN_IF_ERROR(SumOverGroup(table.group(), target_scores));
  std::vector<int64_t> above(users, 0);
  std::vector<char> excluded(static_cast<size_t>(rows), 0);
  for (size_t u = 0; u < users; ++u) {
    const std::span<const int64_t> history(all.history.data() + all.offsets[u],
                                           all.offsets[u + 1] - all.offsets[u]);
    for (int64_t item : history) {
      if (item >= first && item - first < rows) excluded[item - first] = 1;
    }
    const float* row = scores.data() + u * rows;
    for (int64_t i = 0; i < rows; ++i) above[u] += !excluded[i] && row[i] > target_scores[u];
    for (int64_t item : history) {
      if (item >= first && item - first < rows) excluded[item - first] = 0;
    }
  }
  TESSERA_RETURN_IF_ERROR(SumOverGroup(table.group(), above));
  return above;
}

}  // namespace

absl::Status RankTargets(Hstu& model, Arena& arena, parallel::RowShardedTable& table,
                         std::span<const int64_t> offsets, const int64_t* items,
                         const int64_t* timestamps, Split split, RankingSums& sums) {
  const int64_t back = split == Split::kValidation ? 2 : 1, dim = model.dim();
  std::vector<UserHistory> users;
  std::vector<int64_t> targets;
  for (size_t u = 0; u + 1 < offsets.size(); ++u) {
    const int64_t begin = offsets[u], target = offsets[u + 1] - back;
    if (target <= begin) continue;  // nothing before the target
    users.push_back({{items + begin, static_cast<size_t>(target - begin)},
                     {timestamps + begin, static_cast<size_t>(target - begin)},
                     timestamps[target]});
    targets.push_back(items[target]);
  }
  const HstuBatch batch = HistoryBatch(model, users);
  // This rank's tokens (under sp a share of them).
  const parallel::TokenRange mine = model.Tokens(batch);
  const std::vector<int64_t> ids(batch.items.begin() + mine.begin, batch.items.begin() + mine.end);
  TESSERA_ASSIGN_OR_RETURN(const Tensor inputs, LookupRows(table, arena, ids));  // [n, D]
  TESSERA_ASSIGN_OR_RETURN(LastRows last, LastOutputs(model, arena, batch, inputs));
  // Each user is scored once in the group: by the sp rank holding its last
  // token (LastOutputs), and of the tp ranks holding the same users, by tp
  // rank 0 alone; the others add nothing to the exchange.
  parallel::Communicator& tp = model.tp();
  std::vector<UserHistory> scored;
  std::vector<int64_t> scored_targets;
  if (tp.rank() == 0) {
    for (const int64_t u : last.users) {
      scored.push_back(users[u]);
      scored_targets.push_back(targets[u]);
    }
  } else {
    last.rows.clear();
  }
  TESSERA_ASSIGN_OR_RETURN(const GroupUsers all,
                           GatherUsers(table.group(), std::move(last.rows),
                                       std::move(scored_targets), scored, dim));
  const std::vector<float> scores = CosineScores(arena, all.queries, table.RowsOn(arena),
                                                 table.end_row() - table.first_row(), dim);
  TESSERA_ASSIGN_OR_RETURN(const std::vector<int64_t> ranks, GroupRanks(table, all, scores));
  // The sums count each user on the sp rank that scored it (they are summed
  // over dp x sp) and on every tp rank alike (tp rank 0 hands its ranks on).
  std::vector<int64_t> mine_ranks(last.users.size());
  if (tp.rank() == 0) {
    for (size_t i = 0; i < mine_ranks.size(); ++i) mine_ranks[i] = ranks[all.first_mine + i];
  }
  if (tp.size() > 1 && !mine_ranks.empty()) {
    parallel::Communicator& host = tp.host();
    TESSERA_RETURN_IF_ERROR(
        host.Complete(host.Broadcast(mine_ranks.data(), mine_ranks.size(), DType::kI64, 0)));
  }
  for (const int64_t rank : mine_ranks) sums.Add(rank);
  return absl::OkStatus();
}

}  // namespace tessera::hstu
