// A row-sharded embedding table (as torchrec's row-wise sharding): rows
// [0, num_rows) are split over the ranks of a group in contiguous blocks of
// ceil(num_rows / P), rank r owning [r * block, min((r + 1) * block,
// num_rows)). A lookup sends each distinct id to its owner and the rows back
// (all-to-all of counts, then all-to-all-v of ids and of rows); the backward
// pass sums the gradient of each distinct id locally first, sends the sums to
// the owners the same way, and the owner accumulates them into the rows
// touched this step. A row-wise sparse optimizer then updates the touched
// rows only (Adam, or row-wise Adagrad with one accumulator per row).
//
// Replicas: when the world holds several copies of the table (table groups
// smaller than the world), `replicas` joins the ranks that own the same rows
// in every copy; Step first sums each copy's touched rows' gradients over
// them (the union of the rows any copy touched), so every copy makes the
// same update. A null group is this process alone (the whole table, no
// communication): the single-process case of the same code.
//
// Placement. By default the rows, their gradients and optimizer state live
// in host memory and the table talks over the groups' host() communicators.
// Given a `device` backend, they live in that backend's memory instead
// (device-resident: the rows, Adam's moments or Adagrad's sums, and the
// touched rows' summed gradients); the ids, their routing and the set of
// touched rows stay host values (the ids come from the batch, so routing
// them needs no device read; counts and ids travel over host()), while the
// rows and their gradients travel over the groups' device communicators
// (NCCL on a GPU, MPI staged through host memory otherwise) and the sparse
// update is a backend op (Backend::SparseRowUpdate). Both placements make
// the same arithmetic in the same order, so they give the same bits on a
// CPU backend, and their checkpoints are the same pieces: a checkpoint
// written with one placement loads with the other.
//
// As SparseParameters (runtime/train/sparse_parameters.h) the table saves
// its rows as box pieces of the global [num_rows, dim] tensor `name`
// (kind "param"), Adam's moments as "adam_m"/"adam_v" boxes of the same
// shape, and row-wise Adagrad's sums as "adagrad_sum" boxes of [num_rows].
//
// Collective contract: every rank of the group calls Lookup, Backward, Step
// and Gather in the same order (a rank with no ids passes an empty list).
// Lookup, Backward, LookupDistinct, BackwardDistinct and local_rows() are the
// host table's (host buffers); LookupDistinctOn / BackwardDistinctOn work
// with either placement and take and give the arena's memory.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "runtime/backend/backend.h"
#include "runtime/base/status.h"
#include "runtime/tensor/arena.h"
#include "runtime/tensor/tensor.h"
#include "runtime/train/sparse_parameters.h"

namespace tessera::parallel {

struct SparseOptimizerOptions {
  enum class Kind { kAdam, kRowwiseAdagrad };
  Kind kind = Kind::kAdam;
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.98, eps = 1e-8;
};

class RowShardedTable : public SparseParameters {
 public:
  // Every element starts at `init_std * CounterNormal(Mix64(seed) ^
  // HashName(name), global index)` (ParameterStore's normal init), so any
  // number of shards starts from the same table. `group` (null: this
  // process alone) splits the rows; `replicas` (null: none) joins the copies.
  // `device` (null: host memory) holds the rows and their state; the groups
  // are then the device communicators for that backend's buffers.
  RowShardedTable(Communicator* group, Communicator* replicas, std::string name, int64_t num_rows,
                  int64_t dim, float init_std, uint64_t seed = 0, Backend* device = nullptr);
  // The whole table on one group (tests).
  RowShardedTable(Communicator& group, std::string name, int64_t num_rows, int64_t dim,
                  float init_std)
      : RowShardedTable(&group, nullptr, std::move(name), num_rows, dim, init_std) {}

  const std::string& name() const { return name_; }
  int64_t num_rows() const { return num_rows_; }
  int64_t dim() const { return dim_; }
  // This rank's rows [first_row(), end_row()).
  int64_t first_row() const { return first_; }
  int64_t end_row() const { return end_; }
  int Owner(int64_t row) const { return static_cast<int>(row / block_); }
  // The ranks the rows are split over (null: this process alone); host().
  Communicator* group() const { return group_; }
  // The backend holding the rows; null: host memory.
  Backend* device() const { return device_; }
  // [end_row() - first_row(), dim], row-major: the host table's rows.
  std::vector<float>& local_rows() {
    TESSERA_CHECK(device_ == nullptr);
    return rows_;
  }
  // A host copy of this rank's rows, either placement (tests, weights).
  std::vector<float> HostRows() const;
  // This rank's rows where `arena`'s backend reads them: the device table's
  // own buffer, or the host table's rows (copied into the arena on a device).
  const float* RowsOn(Arena& arena);

  // LookupDistinct with the rows [distinct, dim] in `arena`'s memory
  // (`arena`'s backend must be the table's device when it has one): the
  // device table gathers and exchanges them on the device, the host table
  // copies them over. `slots` as LookupDistinct's.
  absl::Status LookupDistinctOn(Arena& arena, std::span<const int64_t> ids, Tensor* rows,
                                std::vector<int32_t>* slots);
  // BackwardDistinct of `ddistinct` [distinct, dim] in `arena`'s memory:
  // the device table exchanges and accumulates it on the device (no host
  // read), the host table reads it back first.
  absl::Status BackwardDistinctOn(Arena& arena, const Tensor& ddistinct);

  // out [ids.size(), dim] = table[ids]; ids in [0, num_rows) (checked: an
  // error names the id and the table). Keeps the ids for Backward.
  absl::Status Lookup(std::span<const int64_t> ids, float* out);
  // dout [ids.size(), dim] of the last Lookup: the owners accumulate the
  // summed gradient of every touched row (over any number of Lookup /
  // Backward pairs until the next step: micro-batches).
  absl::Status Backward(const float* dout);
  // The same lookup without expanding duplicates: `rows` [distinct, dim]
  // holds the rows of the distinct ids (ascending), and `slots` (when not
  // null) [ids.size()] where each position's row is among them. Lookup is
  // this followed by rows[slots[i]] for every i.
  absl::Status LookupDistinct(std::span<const int64_t> ids, std::vector<float>* rows,
                              std::vector<int32_t>* slots);
  // The gradient of the last lookup's distinct rows [distinct, dim], each
  // the sum over the positions holding it (Backward sums in position order,
  // then calls this).
  absl::Status BackwardDistinct(const float* ddistinct);
  // Updates the rows touched since the last step with the gradients
  // multiplied by `grad_scale` (step t counts from 1 for Adam's bias
  // correction) and forgets them. Sums over the replicas first.
  absl::Status Step(const SparseOptimizerOptions& options, int64_t t, double grad_scale = 1.0);
  // The rows touched since the last step and their summed gradients (a
  // copy, for tests and benchmarks).
  std::map<int64_t, std::vector<float>> touched() const;
  int64_t num_touched() const { return static_cast<int64_t>(touched_rows_.size()); }

  // The whole table [num_rows, dim] on every rank of the group (evaluation,
  // the weights a run ends with). Collective over the group.
  absl::StatusOr<std::vector<float>> Gather();
  // Replaces this rank's rows by theirs in `whole` [num_rows, dim].
  void AssignFromWhole(std::span<const float> whole);

  // SparseParameters, with the optimizer `options()` (its lr scaled by the
  // schedule: lr_t * options().lr / base_lr).
  void set_options(const SparseOptimizerOptions& options, double base_lr) {
    options_ = options;
    base_lr_ = base_lr;
  }
  absl::Status Step(double lr, double global_elements, int64_t step) override;
  void AppendSnapshot(std::vector<SavePiece>* pieces) const override;
  std::vector<LoadPiece> LoadTargets(bool parameters_only) override;
  absl::Status FinishLoad() override;
  size_t StateBytes() const override;

 private:
  // The distinct ids of the last lookup grouped by owner, and where each
  // lookup position finds its row among them.
  struct Routing {
    std::vector<int64_t> unique;      // sorted: owners in rank order
    std::vector<size_t> send_counts;  // ids to each rank
    std::vector<size_t> recv_counts;  // ids from each rank
    std::vector<int64_t> received;    // ids other ranks asked this rank for
    std::vector<int32_t> slot;        // lookup position -> index in unique
  };
  int group_rank() const { return group_ ? group_->rank() : 0; }
  int group_size() const { return group_ ? group_->size() : 1; }
  absl::Status Route(std::span<const int64_t> ids);
  // Route's distinct sorted ids and each position's slot among them: by
  // sorting, or, when the table has few rows for the lookup (at most
  // kDenseDedupeRows per id), by marking rows in a table-sized array, which
  // is linear in both. The same result either way.
  void Dedupe(std::span<const int64_t> ids, Routing* r);
  absl::Status Exchange(const void* send, const std::vector<size_t>& send_counts, void* recv,
                        const std::vector<size_t>& recv_counts, DType dtype, int64_t width);
  // Exchange of device rows [*, dim] over the group's device communicator.
  absl::Status DeviceExchange(const float* send, const std::vector<size_t>& send_counts,
                              float* recv, const std::vector<size_t>& recv_counts);
  // Sums the touched rows' gradients over the replicas (their union).
  absl::Status SumOverReplicas();
  // The union of the touched rows over the replicas, added to this rank's
  // (host values: an all-gather of row ids).
  absl::Status TouchUnionOfReplicas();
  // `values` (host int32) in device_index_ (grown when too small: a step
  // of the steady state allocates no device memory); valid until the next
  // call (later device work is ordered after this copy).
  const int32_t* UploadIndex(const std::vector<int32_t>& values);
  // The device state of the optimizer kind, allocated (zeros) when missing.
  void EnsureDeviceState();
  // The box [first_row, 0] + [rows, dim] (or [rows] with `per_row`) of `kind`.
  PieceDesc Box(const std::string& kind, bool per_row) const;

  Communicator* group_;
  Communicator* replicas_;
  std::string name_;
  int64_t num_rows_, dim_, block_, first_, end_;
  std::vector<float> rows_;
  Routing routing_;
  std::vector<int32_t> row_slot_;  // Dedupe's marks, -1 between lookups (dense path only)
  // The rows touched since the last step (global ids, in the order first
  // touched) and their summed gradients, [touched, dim]; slot_of_row_[row -
  // first_] is a row's index in them, -1 when untouched (4 bytes per owned
  // row: 1/dim of the rows' own memory).
  std::vector<int64_t> touched_rows_;
  std::vector<float> touched_grads_;
  std::vector<int32_t> slot_of_row_;
  // touched_rows_'s slot for `row` (owned by this rank), added when new
  // (with a zero gradient, on the host or in device_grads_).
  int32_t TouchedSlot(int64_t row);
  float* TouchedGradient(int64_t row) {
    const int32_t slot = TouchedSlot(row);
    return touched_grads_.data() + int64_t{slot} * dim_;
  }
  std::vector<float> m_, v_;                     // Adam moments
  std::vector<float> sums_;                      // row-wise Adagrad: one sum per row
  SparseOptimizerOptions options_;
  double base_lr_ = 0;

  // Device placement (null device_: none). The groups' device
  // communicators; the rows [rows, dim], Adam's m and v [rows, dim] or
  // Adagrad's sums [rows] (allocated at the first step or load); the
  // touched rows' gradients by slot, [capacity, dim], grown as rows are
  // touched (zeros beyond the touched ones). The host vectors rows_, m_,
  // v_, sums_ are empty then, except as a load's staging until FinishLoad.
  Backend* device_ = nullptr;
  Communicator* device_group_ = nullptr;
  Communicator* device_replicas_ = nullptr;
  Tensor device_rows_, device_m_, device_v_, device_sums_, device_grads_;
  Tensor device_index_, device_packed_;  // Step's and SumOverReplicas' scratch, grow-only
};

}  // namespace tessera::parallel
