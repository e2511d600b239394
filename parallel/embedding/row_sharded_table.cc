#include "parallel/embedding/row_sharded_table.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/random.h"
#include "runtime/base/status.h"

namespace tessera::parallel {

RowShardedTable::RowShardedTable(Communicator& group, std::string name, int64_t num_rows,
                                 int64_t dim, float init_std)
    : group_(group), name_(std::move(name)), num_rows_(num_rows), dim_(dim) {
  const int64_t p = group.size();
  block_ = std::max<int64_t>(1, (num_rows + p - 1) / p);
  first_ = std::min(num_rows, group.rank() * block_);
  end_ = std::min(num_rows, first_ + block_);
  rows_.resize(static_cast<size_t>((end_ - first_) * dim));
  const uint64_t key = HashName(name_);
  for (int64_t i = 0; i < static_cast<int64_t>(rows_.size()); ++i) {
    rows_[i] = init_std * CounterNormal(key, static_cast<uint64_t>(first_ * dim + i));
  }
  m_.assign(rows_.size(), 0.0f);
  v_.assign(rows_.size(), 0.0f);
}

absl::Status RowShardedTable::Exchange(const void* send, const std::vector<size_t>& send_counts,
                                       void* recv, const std::vector<size_t>& recv_counts,
                                       DType dtype, int64_t width) {
  std::vector<size_t> s(send_counts), r(recv_counts);
  for (size_t& c : s) c *= static_cast<size_t>(width);
  for (size_t& c : r) c *= static_cast<size_t>(width);
  return group_.Complete(group_.AllToAllV(send, s, recv, r, dtype));
}

absl::Status RowShardedTable::Route(std::span<const int64_t> ids) {
  Routing r;
  for (int64_t id : ids) {
    if (id < 0 || id >= num_rows_) {
      return DataError(absl::StrCat("table \"", name_, "\": id ", id, " is outside [0, ",
                                    num_rows_, ") (rank ", group_.rank(), " of ", group_.name(),
                                    ")"));
    }
  }
  r.unique.assign(ids.begin(), ids.end());
  std::sort(r.unique.begin(), r.unique.end());
  r.unique.erase(std::unique(r.unique.begin(), r.unique.end()), r.unique.end());
  for (int64_t id : ids) {
    r.slot.push_back(static_cast<int32_t>(
        std::lower_bound(r.unique.begin(), r.unique.end(), id) - r.unique.begin()));
  }
  const int p = group_.size();
  std::vector<int64_t> send(p, 0), recv(p, 0);
  for (int64_t id : r.unique) ++send[Owner(id)];
  TESSERA_RETURN_IF_ERROR(group_.Complete(group_.AllToAll(send.data(), recv.data(), 1, DType::kI64)));
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

absl::Status RowShardedTable::Lookup(std::span<const int64_t> ids, float* out) {
  TESSERA_RETURN_IF_ERROR(Route(ids));
  const Routing& r = routing_;
  std::vector<float> served(r.received.size() * dim_);  // rows this rank owns, as asked
  for (size_t i = 0; i < r.received.size(); ++i) {
    std::copy_n(rows_.data() + (r.received[i] - first_) * dim_, dim_, served.data() + i * dim_);
  }
  std::vector<float> unique_rows(r.unique.size() * dim_);
  TESSERA_RETURN_IF_ERROR(Exchange(served.data(), r.recv_counts, unique_rows.data(),
                                   r.send_counts, DType::kF32, dim_));
  for (size_t i = 0; i < r.slot.size(); ++i) {
    std::copy_n(unique_rows.data() + r.slot[i] * dim_, dim_, out + i * dim_);
  }
  return absl::OkStatus();
}

absl::Status RowShardedTable::Backward(const float* dout) {
  const Routing& r = routing_;
  std::vector<float> summed(r.unique.size() * dim_, 0.0f);  // duplicates summed first
  for (size_t i = 0; i < r.slot.size(); ++i) {
    float* dst = summed.data() + r.slot[i] * dim_;
    for (int64_t d = 0; d < dim_; ++d) dst[d] += dout[i * dim_ + d];
  }
  std::vector<float> received(r.received.size() * dim_);
  TESSERA_RETURN_IF_ERROR(Exchange(summed.data(), r.send_counts, received.data(),
                                   r.recv_counts, DType::kF32, dim_));
  // Senders in rank order: the sum over ranks has a fixed order.
  for (size_t i = 0; i < r.received.size(); ++i) {
    std::vector<float>& g = grads_[r.received[i]];
    g.resize(static_cast<size_t>(dim_), 0.0f);
    for (int64_t d = 0; d < dim_; ++d) g[d] += received[i * dim_ + d];
  }
  return absl::OkStatus();
}

void RowShardedTable::Step(const SparseOptimizerOptions& o, int64_t t) {
  const bool adam = o.kind == SparseOptimizerOptions::Kind::kAdam;
  const double c1 = 1.0 - std::pow(o.beta1, static_cast<double>(t));
  const double c2 = 1.0 - std::pow(o.beta2, static_cast<double>(t));
  for (const auto& [row, g] : grads_) {
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
      float& sum = v_[at];
      sum = static_cast<float>(sum + mean_square);
      for (int64_t d = 0; d < dim_; ++d) {
        p[d] -= static_cast<float>(o.lr * g[d] / (std::sqrt(sum) + o.eps));
      }
    }
  }
  grads_.clear();
}

}  // namespace tessera::parallel
