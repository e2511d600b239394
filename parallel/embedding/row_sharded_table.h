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
// The rows, their gradients and optimizer state live in host memory, so the
// table talks over the groups' host() communicators.
//
// As SparseParameters (runtime/train/sparse_parameters.h) the table saves
// its rows as box pieces of the global [num_rows, dim] tensor `name`
// (kind "param"), Adam's moments as "adam_m"/"adam_v" boxes of the same
// shape, and row-wise Adagrad's sums as "adagrad_sum" boxes of [num_rows].
//
// Collective contract: every rank of the group calls Lookup, Backward, Step
// and Gather in the same order (a rank with no ids passes an empty list).
// Host memory only (the MPI communicator's buffers).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
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
  RowShardedTable(Communicator* group, Communicator* replicas, std::string name, int64_t num_rows,
                  int64_t dim, float init_std, uint64_t seed = 0);
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
  // The ranks the rows are split over (null: this process alone).
  Communicator* group() const { return group_; }
  // [end_row() - first_row(), dim], row-major.
  std::vector<float>& local_rows() { return rows_; }

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
  // Sums the touched rows' gradients over the replicas (their union).
  absl::Status SumOverReplicas();
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
  // touched_rows_'s slot for `row` (owned by this rank), added when new.
  float* TouchedGradient(int64_t row);
  std::vector<float> m_, v_;                     // Adam moments
  std::vector<float> sums_;                      // row-wise Adagrad: one sum per row
  SparseOptimizerOptions options_;
  double base_lr_ = 0;
};

}  // namespace tessera::parallel
