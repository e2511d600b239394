#include "models/hstu/scoring.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace tessera::hstu {

std::vector<float> ScoreItems(Hstu& model, Arena& arena, const float* table,
                              std::span<const UserHistory> users) {
  const auto count = static_cast<int64_t>(users.size());
  const int64_t dim = model.dim(), items = model.num_items();
  HstuBatch batch;
  for (int64_t u = 0; u < count; ++u) {
    AppendHistoryUser(users[u].items, users[u].timestamps, users[u].next_timestamp,
                      model.max_len(), static_cast<uint64_t>(u), batch);
  }
  Backend& backend = arena.backend();
  const int64_t total = batch.tokens();
  Tensor ids = arena.AllocateUninitialized(DType::kI32, Shape{total});
  Tensor inputs = arena.AllocateUninitialized(DType::kF32, Shape{total, dim});  // [T, D]
  if (total > 0) {
    backend.CopyToDevice(ids.address(), batch.items.data(), ids.bytes());
    backend.EmbeddingForward(ids.ptr<int32_t>(), table, inputs.ptr<float>(), total, dim);
  }
  const Tensor outputs = model.Forward(arena, batch, inputs.ptr<float>(), /*dropout=*/nullptr,
                                       /*record=*/false);
  // Each user's last row, gathered as an embedding lookup of row ids.
  std::vector<int32_t> last(count);
  for (int64_t u = 0; u < count; ++u) last[u] = static_cast<int32_t>(batch.offsets[u + 1] - 1);
  Tensor rows = arena.AllocateUninitialized(DType::kI32, Shape{count});
  backend.CopyToDevice(rows.address(), last.data(), rows.bytes());
  Tensor queries = arena.AllocateUninitialized(DType::kF32, Shape{count, dim});  // [U, D]
  backend.EmbeddingForward(rows.ptr<int32_t>(), outputs.ptr<float>(), queries.ptr<float>(), count,
                           dim);
  // Item rows scaled to length sqrt(D) (RmsNorm without gamma), as the loss does.
  Tensor unit_table = arena.AllocateUninitialized(DType::kF32, Shape{items, dim});
  Tensor rstd = arena.AllocateUninitialized(DType::kF32, Shape{items});
  backend.RmsNormForward(table, nullptr, unit_table.ptr<float>(), rstd.ptr<float>(), items, dim,
                         1e-12f / static_cast<float>(dim));
  Tensor scores = arena.AllocateUninitialized(DType::kF32, Shape{count, items});
  backend.Gemm(false, true, count, items, dim, 1.0f / std::sqrt(static_cast<float>(dim)),
               queries.ptr<float>(), dim, unit_table.ptr<float>(), dim, 0.0f, scores.ptr<float>(),
               items);
  std::vector<float> host(static_cast<size_t>(count * items));
  backend.CopyToHost(host.data(), scores.address(), scores.bytes());
  return host;
}

void RankTargets(Hstu& model, Arena& arena, const float* table, std::span<const int64_t> offsets,
                 const int64_t* items, const int64_t* timestamps, Split split,
                 RankingSums& sums) {
  const int64_t back = split == Split::kValidation ? 2 : 1;
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
  if (users.empty()) return;
  const std::vector<float> scores = ScoreItems(model, arena, table, users);
  const int64_t n = model.num_items();
  for (size_t u = 0; u < users.size(); ++u) {
    sums.Add(TargetRank({scores.data() + u * n, static_cast<size_t>(n)}, targets[u],
                        users[u].items));
  }
}

std::vector<int64_t> TopItems(std::span<const float> scores, std::span<const int64_t> history,
                              int64_t k) {
  std::vector<bool> excluded(scores.size(), false);
  for (int64_t item : history) {
    if (item >= 0 && item < static_cast<int64_t>(scores.size())) excluded[item] = true;
  }
  std::vector<int64_t> candidates;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!excluded[i]) candidates.push_back(static_cast<int64_t>(i));
  }
  k = std::min<int64_t>(k, static_cast<int64_t>(candidates.size()));
  // Best score first; ties by the smaller id.
  std::partial_sort(candidates.begin(), candidates.begin() + k, candidates.end(),
                    [&](int64_t a, int64_t b) {
                      return scores[a] != scores[b] ? scores[a] > scores[b] : a < b;
                    });
  candidates.resize(static_cast<size_t>(k));
  return candidates;
}

}  // namespace tessera::hstu
