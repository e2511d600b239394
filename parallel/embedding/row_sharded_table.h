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
// Collective contract: every rank of the group calls Lookup, Backward and
// the optimizer step in the same order (a rank with no ids passes an empty
// list). Host memory only (the MPI communicator's buffers).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "parallel/comm/communicator.h"

namespace tessera::parallel {

struct SparseOptimizerOptions {
  enum class Kind { kAdam, kRowwiseAdagrad };
  Kind kind = Kind::kAdam;
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.98, eps = 1e-8;
};

class RowShardedTable {
 public:
  // Every element starts at `init_std * CounterNormal(HashName(name), global
  // index)`, so any number of shards starts from the same table.
  RowShardedTable(Communicator& group, std::string name, int64_t num_rows, int64_t dim,
                  float init_std);

  int64_t num_rows() const { return num_rows_; }
  int64_t dim() const { return dim_; }
  // This rank's rows [first_row(), end_row()).
  int64_t first_row() const { return first_; }
  int64_t end_row() const { return end_; }
  int Owner(int64_t row) const { return static_cast<int>(row / block_); }
  // [end_row() - first_row(), dim], row-major.
  std::vector<float>& local_rows() { return rows_; }

  // out [ids.size(), dim] = table[ids]; ids in [0, num_rows) (checked: an
  // error names the id and the table). Keeps the ids for Backward.
  absl::Status Lookup(std::span<const int64_t> ids, float* out);
  // dout [ids.size(), dim] of the last Lookup: the owners accumulate the
  // summed gradient of every touched row.
  absl::Status Backward(const float* dout);
  // Updates the rows touched since the last step (step t counts from 1 for
  // Adam's bias correction) and forgets their gradients.
  void Step(const SparseOptimizerOptions& options, int64_t t);
  // The rows touched since the last step and their summed gradients.
  const std::map<int64_t, std::vector<float>>& touched() const { return grads_; }

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
  absl::Status Route(std::span<const int64_t> ids);
  absl::Status Exchange(const void* send, const std::vector<size_t>& send_counts, void* recv,
                        const std::vector<size_t>& recv_counts, DType dtype, int64_t width);

  Communicator& group_;
  std::string name_;
  int64_t num_rows_, dim_, block_, first_, end_;
  std::vector<float> rows_;
  Routing routing_;
  std::map<int64_t, std::vector<float>> grads_;  // touched rows this step
  std::vector<float> m_, v_;                     // Adam moments, or v_: Adagrad sums per row
};

}  // namespace tessera::parallel
