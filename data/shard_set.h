// The shards of one data set, opened lazily, read by global sample index.
//
// The generic half of every reader: it maps a global sample index to (shard,
// row), opens each shard the first time it is needed (validating it against
// its schema and manifest entry), and reads rows of the datasets that have one
// row per sample by hyperslab, one H5Dread per run of consecutive rows.
// Datasets with one element per row (labels, ids) are small: they are read
// whole on first use and served from memory.
//
// Not thread-safe: a reader uses it from its one I/O thread only.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "data/manifest.h"
#include "runtime/hdf5/hdf5_util.h"
#include "runtime/tensor/dtype.h"

namespace tessera {

class ShardSet {
 public:
  // `manifest` must have passed ReadManifest for `dir`.
  ShardSet(std::string dir, DataManifest manifest);

  int64_t num_samples() const { return manifest_.num_samples(); }
  const DataManifest& manifest() const { return manifest_; }

  // Reads, for each global sample index in `indices`, its row of `dataset`
  // (`row_elements` elements of `dtype`) into `out` [indices.size(), row_elements].
  // Indices may repeat and come in any order.
  absl::Status ReadRows(const std::string& dataset, DType dtype, int64_t row_elements,
                        const std::vector<int64_t>& indices, void* out);

  // Closes every open shard (they reopen on the next read).
  void CloseAll() { shards_.clear(); }

  // Shard-level access, for readers whose rows have variable length.
  int num_shards() const { return manifest_.shards_size(); }
  std::string ShardFile(int shard) const { return ShardPath(dir_, manifest_.shards(shard)); }
  // What validating shard `shard` found (opening it on first use).
  absl::StatusOr<const ShardInfo*> Info(int shard);
  // Elements [begin, begin + count) of the rank-1 dataset `name` of `shard`,
  // by hyperslab. Errors name the shard file.
  absl::Status ReadRange(int shard, const std::string& name, DType dtype, int64_t begin,
                         int64_t count, void* out);
  // The (shard, row) of global sample `index`.
  std::pair<int, int64_t> Locate(int64_t index) const;

 private:
  struct OpenDataset {
    H5Id dataset;
    H5Id file_space;             // reused for every hyperslab selection
    std::vector<uint8_t> whole;  // the whole dataset when it has one element per row
  };
  struct OpenShard {
    H5Id file;
    ShardInfo info;
    std::map<std::string, OpenDataset> datasets;
  };
  // The open shard `index`, opening and validating it on first use.
  absl::StatusOr<OpenShard*> Shard(int index);
  // `read_whole`: keep the whole dataset in memory (one element per row).
  absl::StatusOr<OpenDataset*> Dataset(int shard, const std::string& name, DType dtype,
                                       int64_t row_elements, bool read_whole);

  // Reads rows [first, first + count) of `dataset` into scratch_.
  absl::Status ReadRun(const OpenDataset& dataset, int shard, DType dtype, int64_t row_elements,
                       int64_t first, int64_t count);

  std::string dir_;
  DataManifest manifest_;
  std::vector<int64_t> shard_begin_;  // global index of each shard's first sample, then the total
  std::map<int, std::unique_ptr<OpenShard>> shards_;
  std::vector<uint8_t> scratch_;
};

}  // namespace tessera
