#include "parallel/embedding/row_sharded_table.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/random.h"
#include "runtime/base/status.h"

namespace tessera::parallel {

RowShardedTable::RowShardedTable(Communicator* group, Communicator* replicas, std::string name,
                                 int64_t num_rows, int64_t dim, float init_std, uint64_t seed)
    : group_(group ? &group->host() : nullptr),
      replicas_(replicas ? &replicas->host() : nullptr),
      name_(std::move(name)),
      num_rows_(num_rows),
      dim_(dim) {
  const int64_t p = group_size();
  block_ = std::max<int64_t>(1, (num_rows + p - 1) / p);
  first_ = std::min(num_rows, group_rank() * block_);
  end_ = std::min(num_rows, first_ + block_);
  rows_.resize(static_cast<size_t>((end_ - first_) * dim));
  const uint64_t key = Mix64(seed) ^ HashName(name_);
  for (int64_t i = 0; i < static_cast<int64_t>(rows_.size()); ++i) {
    rows_[i] = init_std * CounterNormal(key, static_cast<uint64_t>(first_ * dim + i));
  }
}

absl::Status RowShardedTable::Exchange(const void* send, const std::vector<size_t>& send_counts,
                                       void* recv, const std::vector<size_t>& recv_counts,
                                       DType dtype, int64_t width) {
  std::vector<size_t> s(send_counts), r(recv_counts);
  for (size_t& c : s) c *= static_cast<size_t>(width);
  for (size_t& c : r) c *= static_cast<size_t>(width);
  if (group_ == nullptr) {  // this process alone: what it sends is what it receives
    if (s[0] > 0) std::copy_n(static_cast<const char*>(send), s[0] * DTypeSize(dtype),
                              static_cast<char*>(recv));
    return absl::OkStatus();
  }
  return group_->Complete(group_->AllToAllV(send, s, recv, r, dtype));
}

// Rows per looked-up id below which Dedupe marks rows instead of sorting.
constexpr int64_t kDenseDedupeRows = 8;

void RowShardedTable::Dedupe(std::span<const int64_t> ids, Routing* r) {
  const int64_t n = static_cast<int64_t>(ids.size());
  r->slot.resize(ids.size());
  if (num_rows_ > kDenseDedupeRows * std::max<int64_t>(n, 1024)) {
    r->unique.assign(ids.begin(), ids.end());
    std::sort(r->unique.begin(), r->unique.end());
    r->unique.erase(std::unique(r->unique.begin(), r->unique.end()), r->unique.end());
#pragma omp parallel for schedule(static) if (n > (int64_t{1} << 16))
    for (int64_t i = 0; i < n; ++i) {
      r->slot[i] = static_cast<int32_t>(
          std::lower_bound(r->unique.begin(), r->unique.end(), ids[i]) - r->unique.begin());
    }
    return;
  }
  if (row_slot_.empty()) row_slot_.assign(static_cast<size_t>(num_rows_), -1);
  for (int64_t id : ids) row_slot_[id] = 0;
  r->unique.clear();
  for (int64_t row = 0; row < num_rows_; ++row) {
    if (row_slot_[row] == 0) r->unique.push_back(row);
  }
  for (size_t k = 0; k < r->unique.size(); ++k) {
    row_slot_[r->unique[k]] = static_cast<int32_t>(k);
  }
#pragma omp parallel for schedule(static) if (n > (int64_t{1} << 16))
  for (int64_t i = 0; i < n; ++i) r->slot[i] = row_slot_[ids[i]];
  for (int64_t row : r->unique) row_slot_[row] = -1;
}

absl::Status RowShardedTable::Route(std::span<const int64_t> ids) {
  Routing r;
  for (int64_t id : ids) {
    if (id < 0 || id >= num_rows_) {
      return DataError(absl::StrCat("table \"", name_, "\": id ", id, " is outside [0, ",
                                    num_rows_, ") (rank ", group_rank(), " of ",
                                    group_ ? group_->name() : std::string("one process"), ")"));
    }
  }
  Dedupe(ids, &r);
  const int p = group_size();
  std::vector<int64_t> send(p, 0), recv(p, 0);
  for (int64_t id : r.unique) ++send[Owner(id)];
  if (group_ != nullptr) {
    TESSERA_RETURN_IF_ERROR(
        group_->Complete(group_->AllToAll(send.data(), recv.data(), 1, DType::kI64)));
  } else {
    recv = send;
  }
  r.send_counts.assign(send.begin(), send.end());
  r.recv_counts.assign(recv.begin(), recv.end());
  size_t total = 0;
  for (size_t c : r.recv_counts) total += c;
  r.received.resize(total);
  TESSERA_RETURN_IF_ERROR(Exchange(r.unique.data(), r.send_counts, r.received.data(),
                                   r.recv_counts, DType::kI64, 1));
  routing_ = std::move(r);
  return absl::OkStatus();
}

absl::Status RowShardedTable::LookupDistinct(std::span<const int64_t> ids,
                                             std::vector<float>* rows,
                                             std::vector<int32_t>* slots) {
  TESSERA_RETURN_IF_ERROR(Route(ids));
  const Routing& r = routing_;
  std::vector<float> served(r.received.size() * dim_);  // rows this rank owns, as asked
  for (size_t i = 0; i < r.received.size(); ++i) {
    std::copy_n(rows_.data() + (r.received[i] - first_) * dim_, dim_, served.data() + i * dim_);
  }
  rows->resize(r.unique.size() * dim_);
  TESSERA_RETURN_IF_ERROR(Exchange(served.data(), r.recv_counts, rows->data(), r.send_counts,
                                   DType::kF32, dim_));
  if (slots != nullptr) *slots = r.slot;
  return absl::OkStatus();
}

absl::Status RowShardedTable::Lookup(std::span<const int64_t> ids, float* out) {
  std::vector<float> distinct;
  TESSERA_RETURN_IF_ERROR(LookupDistinct(ids, &distinct, nullptr));
  const std::vector<int32_t>& slot = routing_.slot;
  const int64_t n = static_cast<int64_t>(slot.size());
#pragma omp parallel for schedule(static) if (n * dim_ > (int64_t{1} << 18))
  for (int64_t i = 0; i < n; ++i) {
    std::copy_n(distinct.data() + int64_t{slot[i]} * dim_, dim_, out + i * dim_);
  }
  return absl::OkStatus();
}

absl::Status RowShardedTable::Backward(const float* dout) {
  const Routing& r = routing_;
  // Duplicates summed first, in position order: one pass over the
  // gradients into the distinct rows' sums (a compact, cache-resident
  // buffer; gathering each row's positions instead reads the gradients at
  // random and measured 2.5x slower).
  std::vector<float> summed(r.unique.size() * dim_, 0.0f);
  for (size_t i = 0; i < r.slot.size(); ++i) {
    float* dst = summed.data() + int64_t{r.slot[i]} * dim_;
    for (int64_t d = 0; d < dim_; ++d) dst[d] += dout[i * dim_ + d];
  }
  return BackwardDistinct(summed.data());
}

absl::Status RowShardedTable::BackwardDistinct(const float* ddistinct) {
  const Routing& r = routing_;
  std::vector<float> received(r.received.size() * dim_);
  TESSERA_RETURN_IF_ERROR(Exchange(ddistinct, r.send_counts, received.data(), r.recv_counts,
                                   DType::kF32, dim_));
  // Senders in rank order: the sum over ranks has a fixed order.
  for (size_t i = 0; i < r.received.size(); ++i) {
    float* g = TouchedGradient(r.received[i]);
    for (int64_t d = 0; d < dim_; ++d) g[d] += received[i * dim_ + d];
  }
  return absl::OkStatus();
}

float* RowShardedTable::TouchedGradient(int64_t row) {
  if (slot_of_row_.empty()) slot_of_row_.assign(static_cast<size_t>(end_ - first_), -1);
  int32_t& slot = slot_of_row_[row - first_];
  if (slot < 0) {
    slot = static_cast<int32_t>(touched_rows_.size());
    touched_rows_.push_back(row);
    touched_grads_.resize(touched_grads_.size() + static_cast<size_t>(dim_), 0.0f);
  }
  return touched_grads_.data() + int64_t{slot} * dim_;
}

std::map<int64_t, std::vector<float>> RowShardedTable::touched() const {
  std::map<int64_t, std::vector<float>> rows;
  for (size_t k = 0; k < touched_rows_.size(); ++k) {
    const float* g = touched_grads_.data() + k * dim_;
    rows[touched_rows_[k]].assign(g, g + dim_);
  }
  return rows;
}

absl::Status RowShardedTable::SumOverReplicas() {
  if (replicas_ == nullptr || replicas_->size() == 1) return absl::OkStatus();
  const int n = replicas_->size();
  // The union of the rows every copy touched, then one all-reduce over it,
  // packed in row order (the same on every copy).
  int64_t count = num_touched();
  std::vector<int64_t> counts(n);
  TESSERA_RETURN_IF_ERROR(
      replicas_->Complete(replicas_->AllGather(&count, counts.data(), 1, DType::kI64)));
  const int64_t most = *std::max_element(counts.begin(), counts.end());
  std::vector<int64_t> mine(touched_rows_);
  mine.resize(static_cast<size_t>(most), -1);
  std::vector<int64_t> all(static_cast<size_t>(most * n));
  TESSERA_RETURN_IF_ERROR(replicas_->Complete(
      replicas_->AllGather(mine.data(), all.data(), static_cast<size_t>(most), DType::kI64)));
  for (int64_t row : all) {
    if (row >= 0) TouchedGradient(row);
  }
  std::vector<int64_t> order(touched_rows_);
  std::sort(order.begin(), order.end());
  std::vector<float> packed(order.size() * dim_);
  for (size_t k = 0; k < order.size(); ++k) {
    std::copy_n(TouchedGradient(order[k]), dim_, packed.data() + k * dim_);
  }
  TESSERA_RETURN_IF_ERROR(replicas_->Complete(
      replicas_->AllReduce(packed.data(), packed.size(), DType::kF32, ReduceOp::kSum)));
  for (size_t k = 0; k < order.size(); ++k) {
    std::copy_n(packed.data() + k * dim_, dim_, TouchedGradient(order[k]));
  }
  return absl::OkStatus();
}

absl::Status RowShardedTable::Step(const SparseOptimizerOptions& o, int64_t t, double grad_scale) {
  TESSERA_RETURN_IF_ERROR(SumOverReplicas());
  const bool adam = o.kind == SparseOptimizerOptions::Kind::kAdam;
  if (adam && m_.empty()) m_.assign(rows_.size(), 0.0f), v_.assign(rows_.size(), 0.0f);
  if (!adam && sums_.empty()) sums_.assign(static_cast<size_t>(end_ - first_), 0.0f);
  const double c1 = 1.0 - std::pow(o.beta1, static_cast<double>(t));
  const double c2 = 1.0 - std::pow(o.beta2, static_cast<double>(t));
  const float scale = static_cast<float>(grad_scale);
  const int64_t touched = num_touched();
  const bool parallel = touched * dim_ > (int64_t{1} << 16);
  if (grad_scale != 1.0) {  // the summed gradients are scaled in place: they are forgotten below
    const int64_t n = static_cast<int64_t>(touched_grads_.size());
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t i = 0; i < n; ++i) touched_grads_[i] *= scale;
  }
  // Rows are independent: any order, any thread gives the same values.
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t k = 0; k < touched; ++k) {
    const int64_t row = touched_rows_[k];
    const float* g = touched_grads_.data() + k * dim_;
    const int64_t at = (row - first_) * dim_;
    float* p = rows_.data() + at;
    if (adam) {
      for (int64_t d = 0; d < dim_; ++d) {
        float& m = m_[at + d];
        float& v = v_[at + d];
        m = static_cast<float>(o.beta1 * m + (1 - o.beta1) * g[d]);
        v = static_cast<float>(o.beta2 * v + (1 - o.beta2) * g[d] * g[d]);
        p[d] -= static_cast<float>(o.lr * (m / c1) / (std::sqrt(v / c2) + o.eps));
      }
    } else {  // row-wise Adagrad: one accumulator per row, the mean square of its gradient
      double mean_square = 0;
      for (int64_t d = 0; d < dim_; ++d) mean_square += double(g[d]) * g[d] / dim_;
      float& sum = sums_[row - first_];
      sum = static_cast<float>(sum + mean_square);
      for (int64_t d = 0; d < dim_; ++d) {
        p[d] -= static_cast<float>(o.lr * g[d] / (std::sqrt(sum) + o.eps));
      }
    }
  }
  for (int64_t row : touched_rows_) slot_of_row_[row - first_] = -1;
  touched_rows_.clear();
  touched_grads_.clear();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> RowShardedTable::Gather() {
  if (group_ == nullptr) return rows_;
  // Every block but the last is full: pad each to block_ rows for the all-gather.
  const size_t block = static_cast<size_t>(block_ * dim_);
  std::vector<float> mine(block, 0.0f);
  std::copy(rows_.begin(), rows_.end(), mine.begin());
  std::vector<float> all(block * static_cast<size_t>(group_->size()));
  TESSERA_RETURN_IF_ERROR(
      group_->Complete(group_->AllGather(mine.data(), all.data(), block, DType::kF32)));
  all.resize(static_cast<size_t>(num_rows_ * dim_));
  return all;
}

void RowShardedTable::AssignFromWhole(std::span<const float> whole) {
  std::copy_n(whole.data() + first_ * dim_, rows_.size(), rows_.begin());
}

absl::Status RowShardedTable::Step(double lr, double global_elements, int64_t step) {
  SparseOptimizerOptions o = options_;
  if (base_lr_ > 0) o.lr = lr * options_.lr / base_lr_;
  return Step(o, step, global_elements > 0 ? 1.0 / global_elements : 1.0);
}

PieceDesc RowShardedTable::Box(const std::string& kind, bool per_row) const {
  if (per_row) return PieceDesc::Box(name_, kind, {num_rows_}, {first_}, {end_ - first_});
  return PieceDesc::Box(name_, kind, {num_rows_, dim_}, {first_, 0}, {end_ - first_, dim_});
}

void RowShardedTable::AppendSnapshot(std::vector<SavePiece>* pieces) const {
  auto add = [&](PieceDesc desc, const std::vector<float>& data) {
    pieces->push_back(SavePiece{std::move(desc), data});
  };
  add(Box("param", false), rows_);
  if (options_.kind == SparseOptimizerOptions::Kind::kAdam) {
    add(Box("adam_m", false), m_.empty() ? std::vector<float>(rows_.size(), 0.0f) : m_);
    add(Box("adam_v", false), v_.empty() ? std::vector<float>(rows_.size(), 0.0f) : v_);
  } else {
    add(Box("adagrad_sum", true),
        sums_.empty() ? std::vector<float>(static_cast<size_t>(end_ - first_), 0.0f) : sums_);
  }
}

std::vector<LoadPiece> RowShardedTable::LoadTargets(bool parameters_only) {
  std::vector<LoadPiece> targets;
  targets.push_back({Box("param", false), rows_.data()});
  if (parameters_only) return targets;
  if (options_.kind == SparseOptimizerOptions::Kind::kAdam) {
    m_.resize(rows_.size(), 0.0f);
    v_.resize(rows_.size(), 0.0f);
    targets.push_back({Box("adam_m", false), m_.data()});
    targets.push_back({Box("adam_v", false), v_.data()});
  } else {
    sums_.resize(static_cast<size_t>(end_ - first_), 0.0f);
    targets.push_back({Box("adagrad_sum", true), sums_.data()});
  }
  return targets;
}

size_t RowShardedTable::StateBytes() const {
  const size_t state = options_.kind == SparseOptimizerOptions::Kind::kAdam
                           ? 2 * rows_.size()
                           : static_cast<size_t>(end_ - first_);
  return sizeof(float) * (rows_.size() + state);
}

}  // namespace tessera::parallel
