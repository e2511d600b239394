#include "parallel/embedding/row_sharded_table.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/random.h"
#include "runtime/base/status.h"
#include "runtime/tensor/host_access.h"

namespace tessera::parallel {

RowShardedTable::RowShardedTable(Communicator* group, Communicator* replicas, std::string name,
                                 int64_t num_rows, int64_t dim, float init_std, uint64_t seed,
                                 Backend* device)
    : group_(group ? &group->host() : nullptr),
      replicas_(replicas ? &replicas->host() : nullptr),
      name_(std::move(name)),
      num_rows_(num_rows),
      dim_(dim),
      device_(device),
      device_group_(device ? group : nullptr),
      device_replicas_(device ? replicas : nullptr) {
  const int64_t p = group_size();
  block_ = std::max<int64_t>(1, (num_rows + p - 1) / p);
  first_ = std::min(num_rows, group_rank() * block_);
  end_ = std::min(num_rows, first_ + block_);
  rows_.resize(static_cast<size_t>((end_ - first_) * dim));
  const uint64_t key = Mix64(seed) ^ HashName(name_);
  for (int64_t i = 0; i < static_cast<int64_t>(rows_.size()); ++i) {
    rows_[i] = init_std * CounterNormal(key, static_cast<uint64_t>(first_ * dim + i));
  }
  if (device_ != nullptr) {  // drawn on the host once, then kept on the device only
    device_rows_ = Tensor::Empty(DType::kF32, Shape{end_ - first_, dim}, *device_);
    if (!rows_.empty()) {
      device_->CopyToDevice(device_rows_.address(), rows_.data(), device_rows_.bytes());
    }
    std::vector<float>().swap(rows_);
  }
}

const int32_t* RowShardedTable::UploadIndex(const std::vector<int32_t>& values) {
  const auto n = static_cast<int64_t>(values.size());
  if (!device_index_.defined() || device_index_.numel() < n) {
    device_index_ = Tensor::Empty(DType::kI32,
                                  Shape{std::max<int64_t>(n, 2 * device_index_.numel())}, *device_);
  }
  if (n > 0) device_->CopyToDevice(device_index_.address(), values.data(), n * sizeof(int32_t));
  return device_index_.ptr<int32_t>();
}

void RowShardedTable::EnsureDeviceState() {
  const int64_t rows = end_ - first_;
  if (options_.kind == SparseOptimizerOptions::Kind::kAdam) {
    if (!device_m_.defined()) device_m_ = Tensor::Empty(DType::kF32, Shape{rows, dim_}, *device_);
    if (!device_v_.defined()) device_v_ = Tensor::Empty(DType::kF32, Shape{rows, dim_}, *device_);
  } else if (!device_sums_.defined()) {
    device_sums_ = Tensor::Empty(DType::kF32, Shape{rows}, *device_);
  }
}

std::vector<float> RowShardedTable::HostRows() const {
  if (device_ == nullptr) return rows_;
  std::vector<float> rows(static_cast<size_t>((end_ - first_) * dim_));
  if (!rows.empty()) {
    device_->CopyToHost(rows.data(), device_rows_.address(), device_rows_.bytes());
  }
  return rows;
}

const float* RowShardedTable::RowsOn(Arena& arena) {
  if (device_ != nullptr) {
    TESSERA_CHECK(arena.backend().device() == device_->device());
    return device_rows_.ptr<float>();
  }
  if (arena.backend().device() == Device::kCpu || rows_.empty()) return rows_.data();
  Tensor copy = arena.AllocateUninitialized(DType::kF32, Shape{end_ - first_, dim_});
  arena.backend().CopyToDevice(copy.address(), rows_.data(), copy.bytes());
  return copy.ptr<float>();
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

absl::Status RowShardedTable::DeviceExchange(const float* send,
                                             const std::vector<size_t>& send_counts, float* recv,
                                             const std::vector<size_t>& recv_counts) {
  std::vector<size_t> s(send_counts), r(recv_counts);
  for (size_t& c : s) c *= static_cast<size_t>(dim_);
  for (size_t& c : r) c *= static_cast<size_t>(dim_);
  if (device_group_ == nullptr) {
    if (s[0] > 0) device_->Copy(recv, send, s[0] * sizeof(float));
    return absl::OkStatus();
  }
  return device_group_->CompleteOnDevice(device_group_->AllToAllV(send, s, recv, r, DType::kF32));
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

absl::Status RowShardedTable::LookupDistinctOn(Arena& arena, std::span<const int64_t> ids,
                                               Tensor* rows, std::vector<int32_t>* slots) {
  Backend& backend = arena.backend();
  if (device_ == nullptr) {
    std::vector<float> host;
    TESSERA_RETURN_IF_ERROR(LookupDistinct(ids, &host, slots));
    *rows = arena.AllocateUninitialized(DType::kF32,
                                        Shape{static_cast<int64_t>(host.size()) / dim_, dim_});
    if (!host.empty()) backend.CopyToDevice(rows->address(), host.data(), rows->bytes());
    return absl::OkStatus();
  }
  TESSERA_CHECK(backend.device() == device_->device());
  TESSERA_RETURN_IF_ERROR(Route(ids));
  const Routing& r = routing_;
  const auto asked = static_cast<int64_t>(r.received.size());
  *rows =
      arena.AllocateUninitialized(DType::kF32, Shape{static_cast<int64_t>(r.unique.size()), dim_});
  // The rows asked of this rank, gathered on the device by local index (the
  // indices are host values: they come from the ids), then sent back.
  std::vector<int32_t> local(r.received.size());
  for (size_t i = 0; i < local.size(); ++i) {
    local[i] = static_cast<int32_t>(r.received[i] - first_);
  }
  Tensor index = arena.AllocateUninitialized(DType::kI32, Shape{asked});
  if (asked > 0) backend.CopyToDevice(index.address(), local.data(), index.bytes());
  Tensor served = device_group_ == nullptr
                      ? *rows
                      : arena.AllocateUninitialized(DType::kF32, Shape{asked, dim_});
  if (asked > 0) {
    backend.EmbeddingForward(index.ptr<int32_t>(), device_rows_.ptr<float>(), served.ptr<float>(),
                             asked, dim_);
  }
  if (device_group_ != nullptr) {
    TESSERA_RETURN_IF_ERROR(
        DeviceExchange(served.ptr<float>(), r.recv_counts, rows->ptr<float>(), r.send_counts));
  }
  if (slots != nullptr) *slots = r.slot;
  return absl::OkStatus();
}

absl::Status RowShardedTable::BackwardDistinctOn(Arena& arena, const Tensor& ddistinct) {
  if (device_ == nullptr) {
    const Tensor host = HostReadable(ddistinct);
    return BackwardDistinct(host.numel() > 0 ? host.data<float>() : nullptr);
  }
  Backend& backend = arena.backend();
  const Routing& r = routing_;
  const auto asked = static_cast<int64_t>(r.received.size());
  // The owners receive the gradients along the lookup's routes (alone: the
  // distinct rows are the received ones, in the same order).
  Tensor received = ddistinct;
  if (device_group_ != nullptr) {
    received = arena.AllocateUninitialized(DType::kF32, Shape{asked, dim_});
    TESSERA_RETURN_IF_ERROR(DeviceExchange(ddistinct.ptr<float>(), r.send_counts,
                                           received.ptr<float>(), r.recv_counts));
  }
  // Each received row's slot among the touched rows (host values); the sum
  // then runs on the device in the host table's order: one
  // EmbeddingBackward per sender, in rank order. A sender sends each row
  // once, so no call adds twice to one slot, and even a GPU's atomic adds
  // make the host table's sums bit for bit.
  std::vector<int32_t> slot(r.received.size());
  for (size_t i = 0; i < slot.size(); ++i) slot[i] = TouchedSlot(r.received[i]);
  if (asked == 0) return absl::OkStatus();
  Tensor index = arena.AllocateUninitialized(DType::kI32, Shape{asked});
  backend.CopyToDevice(index.address(), slot.data(), index.bytes());
  int64_t at = 0;
  for (const size_t count : r.recv_counts) {
    if (count > 0) {
      backend.EmbeddingBackward(index.ptr<int32_t>() + at, received.ptr<float>() + at * dim_,
                                device_grads_.ptr<float>(), static_cast<int64_t>(count), dim_);
    }
    at += static_cast<int64_t>(count);
  }
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

int32_t RowShardedTable::TouchedSlot(int64_t row) {
  if (slot_of_row_.empty()) slot_of_row_.assign(static_cast<size_t>(end_ - first_), -1);
  int32_t& slot = slot_of_row_[row - first_];
  if (slot < 0) {
    slot = static_cast<int32_t>(touched_rows_.size());
    touched_rows_.push_back(row);
    if (device_ == nullptr) {
      touched_grads_.resize(touched_grads_.size() + static_cast<size_t>(dim_), 0.0f);
    } else if (!device_grads_.defined() || device_grads_.dim(0) <= slot) {
      // Grown by doubling up to the rows this rank owns; the new rows are
      // zeros, the touched ones copied over (on the device).
      const int64_t capacity = std::min(
          end_ - first_, std::max<int64_t>({int64_t{64}, 2 * int64_t{slot}, int64_t{slot} + 1}));
      Tensor grown = Tensor::Empty(DType::kF32, Shape{capacity, dim_}, *device_);
      if (slot > 0) {
        device_->Copy(grown.address(), device_grads_.address(),
                      static_cast<size_t>(int64_t{slot} * dim_) * sizeof(float));
      }
      device_grads_ = std::move(grown);
    }
  }
  return slot;
}

std::map<int64_t, std::vector<float>> RowShardedTable::touched() const {
  std::vector<float> grads = touched_grads_;
  if (device_ != nullptr && !touched_rows_.empty()) {
    grads.resize(touched_rows_.size() * static_cast<size_t>(dim_));
    device_->CopyToHost(grads.data(), device_grads_.address(), grads.size() * sizeof(float));
  }
  std::map<int64_t, std::vector<float>> rows;
  for (size_t k = 0; k < touched_rows_.size(); ++k) {
    const float* g = grads.data() + k * dim_;
    rows[touched_rows_[k]].assign(g, g + dim_);
  }
  return rows;
}

absl::Status RowShardedTable::TouchUnionOfReplicas() {
  const int n = replicas_->size();
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
    if (row >= 0) TouchedSlot(row);
  }
  return absl::OkStatus();
}

absl::Status RowShardedTable::SumOverReplicas() {
  if (replicas_ == nullptr || replicas_->size() == 1) return absl::OkStatus();
  // The union of the rows every copy touched, then one all-reduce over it,
  // packed in row order (the same on every copy).
  TESSERA_RETURN_IF_ERROR(TouchUnionOfReplicas());
  std::vector<int64_t> order(touched_rows_);
  std::sort(order.begin(), order.end());
  if (device_ != nullptr) {
    // Packed on the device in row order, all-reduced there, and kept as the
    // touched rows' gradients in that order (the rows are independent).
    std::vector<int32_t> slots(order.size());
    for (size_t k = 0; k < order.size(); ++k) slots[k] = slot_of_row_[order[k] - first_];
    const auto n = static_cast<int64_t>(order.size());
    if (!device_packed_.defined() || device_packed_.dim(0) < n) {
      device_packed_ = Tensor::Empty(DType::kF32, Shape{std::max<int64_t>(n, 1), dim_}, *device_);
    }
    const size_t bytes = static_cast<size_t>(n * dim_) * sizeof(float);
    if (n > 0) {
      device_->EmbeddingForward(UploadIndex(slots), device_grads_.ptr<float>(),
                                device_packed_.ptr<float>(), n, dim_);
    }
    TESSERA_RETURN_IF_ERROR(device_replicas_->CompleteOnDevice(device_replicas_->AllReduce(
        device_packed_.address(), static_cast<size_t>(n * dim_), DType::kF32, ReduceOp::kSum)));
    if (n > 0) device_->Copy(device_grads_.address(), device_packed_.address(), bytes);
    touched_rows_ = order;
    for (size_t k = 0; k < order.size(); ++k) {
      slot_of_row_[order[k] - first_] = static_cast<int32_t>(k);
    }
    return absl::OkStatus();
  }
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
  SparseRowScalars s;
  s.adam = adam;
  s.lr = o.lr;
  s.beta1 = o.beta1;
  s.beta2 = o.beta2;
  s.eps = o.eps;
  s.bias1 = 1.0 - std::pow(o.beta1, static_cast<double>(t));
  s.bias2 = 1.0 - std::pow(o.beta2, static_cast<double>(t));
  s.grad_scale = static_cast<float>(grad_scale);
  const int64_t touched = num_touched();
  // The touched rows as indices into this rank's rows.
  std::vector<int32_t> local(touched_rows_.size());
  for (size_t k = 0; k < local.size(); ++k) {
    local[k] = static_cast<int32_t>(touched_rows_[k] - first_);
  }
  if (device_ != nullptr) {
    EnsureDeviceState();
    if (touched > 0) {
      device_->SparseRowUpdate(s, UploadIndex(local), touched, dim_, device_grads_.ptr<float>(),
                               device_rows_.ptr<float>(), adam ? device_m_.ptr<float>() : nullptr,
                               adam ? device_v_.ptr<float>() : nullptr,
                               adam ? nullptr : device_sums_.ptr<float>());
      // The next step's gradients start from zero.
      device_->Memset(device_grads_.address(), 0,
                      static_cast<size_t>(touched * dim_) * sizeof(float));
    }
  } else {
    if (adam && m_.empty()) m_.assign(rows_.size(), 0.0f), v_.assign(rows_.size(), 0.0f);
    if (!adam && sums_.empty()) sums_.assign(static_cast<size_t>(end_ - first_), 0.0f);
    // The backend's CPU kernel: the formula every placement runs.
    HostBackend().SparseRowUpdate(s, local.data(), touched, dim_, touched_grads_.data(),
                                  rows_.data(), adam ? m_.data() : nullptr,
                                  adam ? v_.data() : nullptr, adam ? nullptr : sums_.data());
  }
  for (int64_t row : touched_rows_) slot_of_row_[row - first_] = -1;
  touched_rows_.clear();
  touched_grads_.clear();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> RowShardedTable::Gather() {
  // The device table's rows through a host copy (the end of a run, not a step).
  std::vector<float> rows = HostRows();
  if (group_ == nullptr) return rows;
  // Every block but the last is full: pad each to block_ rows for the all-gather.
  const size_t block = static_cast<size_t>(block_ * dim_);
  std::vector<float> mine(block, 0.0f);
  std::copy(rows.begin(), rows.end(), mine.begin());
  std::vector<float> all(block * static_cast<size_t>(group_->size()));
  TESSERA_RETURN_IF_ERROR(
      group_->Complete(group_->AllGather(mine.data(), all.data(), block, DType::kF32)));
  all.resize(static_cast<size_t>(num_rows_ * dim_));
  return all;
}

void RowShardedTable::AssignFromWhole(std::span<const float> whole) {
  if (device_ != nullptr) {
    if (device_rows_.numel() > 0) {
      device_->CopyToDevice(device_rows_.address(), whole.data() + first_ * dim_,
                            device_rows_.bytes());
    }
    return;
  }
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
  const size_t values = static_cast<size_t>((end_ - first_) * dim_);
  const size_t per_row = static_cast<size_t>(end_ - first_);
  // A host copy of `host` or, on the device, of `device` (zeros when the
  // state does not exist yet: no step has run).
  auto add = [&](PieceDesc desc, const std::vector<float>& host, const Tensor& device,
                 size_t size) {
    std::vector<float> data(size, 0.0f);
    if (device_ == nullptr) {
      if (!host.empty()) data = host;
    } else if (device.defined() && size > 0) {
      device_->CopyToHost(data.data(), device.address(), size * sizeof(float));
    }
    pieces->push_back(SavePiece{std::move(desc), std::move(data)});
  };
  add(Box("param", false), rows_, device_rows_, values);
  if (options_.kind == SparseOptimizerOptions::Kind::kAdam) {
    add(Box("adam_m", false), m_, device_m_, values);
    add(Box("adam_v", false), v_, device_v_, values);
  } else {
    add(Box("adagrad_sum", true), sums_, device_sums_, per_row);
  }
}

std::vector<LoadPiece> RowShardedTable::LoadTargets(bool parameters_only) {
  // The device table loads into host staging (these vectors), which
  // FinishLoad copies to the device and releases.
  const size_t values = static_cast<size_t>((end_ - first_) * dim_);
  std::vector<LoadPiece> targets;
  rows_.resize(values, 0.0f);
  targets.push_back({Box("param", false), rows_.data()});
  if (parameters_only) return targets;
  if (options_.kind == SparseOptimizerOptions::Kind::kAdam) {
    m_.resize(values, 0.0f);
    v_.resize(values, 0.0f);
    targets.push_back({Box("adam_m", false), m_.data()});
    targets.push_back({Box("adam_v", false), v_.data()});
  } else {
    sums_.resize(static_cast<size_t>(end_ - first_), 0.0f);
    targets.push_back({Box("adagrad_sum", true), sums_.data()});
  }
  return targets;
}

absl::Status RowShardedTable::FinishLoad() {
  if (device_ == nullptr) return absl::OkStatus();
  auto upload = [&](std::vector<float>& staged, Tensor& device) {
    if (!staged.empty()) device_->CopyToDevice(device.address(), staged.data(), device.bytes());
    std::vector<float>().swap(staged);
  };
  upload(rows_, device_rows_);
  if (!m_.empty() || !v_.empty() || !sums_.empty()) {
    EnsureDeviceState();
    if (options_.kind == SparseOptimizerOptions::Kind::kAdam) {
      upload(m_, device_m_);
      upload(v_, device_v_);
    } else {
      upload(sums_, device_sums_);
    }
  }
  return absl::OkStatus();
}

size_t RowShardedTable::StateBytes() const {
  if (device_ != nullptr) return 0;  // device memory: the GPU memory plan counts it
  const size_t state = options_.kind == SparseOptimizerOptions::Kind::kAdam
                           ? 2 * rows_.size()
                           : static_cast<size_t>(end_ - first_);
  return sizeof(float) * (rows_.size() + state);
}

}  // namespace tessera::parallel
