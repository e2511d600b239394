#include "models/hstu/scoring.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::hstu {
namespace {

// `rows` [num_rows, D] of host memory where the arena's backend can read
// them: the rows themselves on the CPU, a copy in the arena on a device.
const float* OnBackend(Arena& arena, const float* rows, int64_t num_rows, int64_t dim) {
  if (arena.backend().device() == Device::kCpu || num_rows == 0) return rows;
  Tensor copy = arena.AllocateUninitialized(DType::kF32, Shape{num_rows, dim});
  arena.backend().CopyToDevice(copy.address(), rows, copy.bytes());
  return copy.ptr<float>();
}

}  // namespace

HstuBatch HistoryBatch(const Hstu& model, std::span<const UserHistory> users) {
  HstuBatch batch;
  for (size_t u = 0; u < users.size(); ++u) {
    AppendHistoryUser(users[u].items, users[u].timestamps, users[u].next_timestamp,
                      model.max_len(), static_cast<uint64_t>(u), batch);
  }
  return batch;
}

absl::StatusOr<LastRows> LastOutputs(Hstu& model, Arena& arena, const HstuBatch& batch,
                                     const Tensor& inputs) {
  const int64_t dim = model.dim();
  LastRows out;
  if (batch.users() == 0) return out;
  TESSERA_ASSIGN_OR_RETURN(const Tensor outputs,
                           model.Forward(arena, batch, inputs.ptr<float>(), /*dropout=*/nullptr,
                                         /*record=*/false));
  // The last rows this rank holds, gathered as an embedding lookup of row ids.
  const parallel::TokenRange mine = model.Tokens(batch);
  std::vector<int32_t> last;
  for (int64_t u = 0; u < batch.users(); ++u) {
    const int64_t row = batch.offsets[u + 1] - 1;
    if (row < mine.begin || row >= mine.end) continue;
    out.users.push_back(u);
    last.push_back(static_cast<int32_t>(row - mine.begin));
  }
  const auto count = static_cast<int64_t>(last.size());
  if (count == 0) return out;
  Backend& backend = arena.backend();
  Tensor rows = arena.AllocateUninitialized(DType::kI32, Shape{count});
  backend.CopyToDevice(rows.address(), last.data(), rows.bytes());
  Tensor queries = arena.AllocateUninitialized(DType::kF32, Shape{count, dim});  // [U, D]
  backend.EmbeddingForward(rows.ptr<int32_t>(), outputs.ptr<float>(), queries.ptr<float>(), count,
                           dim);
  out.rows.resize(static_cast<size_t>(count * dim));
  backend.CopyToHost(out.rows.data(), queries.address(), queries.bytes());
  return out;
}

std::vector<float> CosineScores(Arena& arena, std::span<const float> queries, const float* rows,
                                int64_t num_rows, int64_t dim) {
  const auto count = static_cast<int64_t>(queries.size()) / dim;
  Backend& backend = arena.backend();
  Tensor q = arena.AllocateUninitialized(DType::kF32, Shape{count, dim});
  if (count > 0) backend.CopyToDevice(q.address(), queries.data(), q.bytes());
  // Rows scaled to length sqrt(D) (RmsNorm without gamma), as the loss does.
  Tensor unit = arena.AllocateUninitialized(DType::kF32, Shape{num_rows, dim});
  Tensor rstd = arena.AllocateUninitialized(DType::kF32, Shape{num_rows});
  backend.RmsNormForward(rows, nullptr, unit.ptr<float>(), rstd.ptr<float>(), num_rows, dim,
                         1e-12f / static_cast<float>(dim));
  Tensor scores = arena.AllocateUninitialized(DType::kF32, Shape{count, num_rows});
  backend.Gemm(false, true, count, num_rows, dim, 1.0f / std::sqrt(static_cast<float>(dim)),
               q.ptr<float>(), dim, unit.ptr<float>(), dim, 0.0f, scores.ptr<float>(), num_rows);
  std::vector<float> host(static_cast<size_t>(count * num_rows));
  backend.CopyToHost(host.data(), scores.address(), scores.bytes());
  return host;
}

absl::StatusOr<std::vector<float>> ScoreItems(Hstu& model, Arena& arena, const float* table,
                                              std::span<const UserHistory> users) {
  const int64_t dim = model.dim();
  const HstuBatch batch = HistoryBatch(model, users);
  const int64_t total = batch.tokens();
  Backend& backend = arena.backend();
  Tensor ids = arena.AllocateUninitialized(DType::kI32, Shape{total});
  Tensor inputs = arena.AllocateUninitialized(DType::kF32, Shape{total, dim});  // [T, D]
  // The table copied over once, for the lookup and the scores.
  const float* rows = OnBackend(arena, table, model.num_items(), dim);
  if (total > 0) {
    backend.CopyToDevice(ids.address(), batch.items.data(), ids.bytes());
    backend.EmbeddingForward(ids.ptr<int32_t>(), rows, inputs.ptr<float>(), total, dim);
  }
  TESSERA_ASSIGN_OR_RETURN(const LastRows queries, LastOutputs(model, arena, batch, inputs));
  TESSERA_CHECK(queries.users.size() == users.size());  // one process: every user
  return CosineScores(arena, queries.rows, rows, model.num_items(), dim);
}

absl::StatusOr<Tensor> LookupRows(parallel::RowShardedTable& table, Arena& arena,
                                  std::span<const int64_t> ids) {
  Tensor distinct;
  std::vector<int32_t> slots;
  TESSERA_RETURN_IF_ERROR(table.LookupDistinctOn(arena, ids, &distinct, &slots));
  const int64_t n = static_cast<int64_t>(ids.size()), dim = table.dim();
  Tensor rows = arena.AllocateUninitialized(DType::kF32, Shape{n, dim});
  if (n == 0) return rows;
  Backend& backend = arena.backend();
  Tensor slot = arena.AllocateUninitialized(DType::kI32, Shape{n});
  backend.CopyToDevice(slot.address(), slots.data(), slot.bytes());
  backend.EmbeddingForward(slot.ptr<int32_t>(), distinct.ptr<float>(), rows.ptr<float>(), n, dim);
  return rows;
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
