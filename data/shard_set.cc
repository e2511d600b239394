#include "data/shard_set.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "data/hyperslab.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {

ShardSet::ShardSet(std::string dir, DataManifest manifest)
    : dir_(std::move(dir)), manifest_(std::move(manifest)) {
  shard_begin_.push_back(0);
  for (const ShardEntry& shard : manifest_.shards()) {
    shard_begin_.push_back(shard_begin_.back() + shard.num_samples());
  }
}

absl::StatusOr<ShardSet::OpenShard*> ShardSet::Shard(int index) {
  auto it = shards_.find(index);
  if (it != shards_.end()) return it->second.get();
  H5Lock lock;
  const ShardEntry& entry = manifest_.shards(index);
  const std::string path = ShardPath(dir_, entry);
  auto shard = std::make_unique<OpenShard>();
  TESSERA_ASSIGN_OR_RETURN(shard->file, h5::OpenFileReadOnly(path));
  TESSERA_ASSIGN_OR_RETURN(shard->info,
                           ValidateOpenShard(shard->file.get(), path, manifest_.schema()));
  TESSERA_RETURN_IF_ERROR(CheckShardAgainstManifest(shard->info, entry, manifest_, dir_));
  return shards_.emplace(index, std::move(shard)).first->second.get();
}

absl::StatusOr<ShardSet::OpenDataset*> ShardSet::Dataset(int shard_index, const std::string& name,
                                                         DType dtype, int64_t row_elements,
                                                         bool read_whole) {
  TESSERA_ASSIGN_OR_RETURN(OpenShard * shard, Shard(shard_index));
  auto it = shard->datasets.find(name);
  if (it != shard->datasets.end()) return &it->second;
  const std::string path = ShardPath(dir_, manifest_.shards(shard_index));
  OpenDataset open;
  auto dataset = TESSERA_H5_ID(H5Dopen2(shard->file.get(), name.c_str(), H5P_DEFAULT));
  if (!dataset.ok()) return h5::InFile(path, dataset.status());
  open.dataset = std::move(*dataset);
  TESSERA_ASSIGN_OR_RETURN(std::vector<int64_t> dims, h5::DatasetDims(open.dataset.get()));
  int64_t elements = 1;
  for (size_t i = 1; i < dims.size(); ++i) elements *= dims[i];
  if (dims.empty() || elements != row_elements) {
    return DataError(absl::StrCat(path, ": rows of dataset \"", name, "\" have ", elements,
                                  " elements, the reader expects ", row_elements));
  }
  auto file_space = TESSERA_H5_ID(H5Dget_space(open.dataset.get()));
  if (!file_space.ok()) return h5::InFile(path, file_space.status());
  open.file_space = std::move(*file_space);
  if (read_whole && dims[0] > 0) {
    open.whole.resize(static_cast<size_t>(dims[0]) * DTypeSize(dtype));
    TESSERA_RETURN_IF_ERROR(
        h5::InFile(path, TESSERA_H5(H5Dread(open.dataset.get(), h5::MemoryType(dtype), H5S_ALL,
                                            H5S_ALL, H5P_DEFAULT, open.whole.data()))));
  }
  return &shard->datasets.emplace(name, std::move(open)).first->second;
}

absl::Status ShardSet::ReadRun(const OpenDataset& dataset, int shard, DType dtype,
                               int64_t row_elements, int64_t first, int64_t count) {
  const std::string path = ShardPath(dir_, manifest_.shards(shard));
  const hid_t file_space = dataset.file_space.get();
  const int rank = H5Sget_simple_extent_ndims(file_space);
  TESSERA_RETURN_IF_ERROR(h5::InFile(path, TESSERA_H5(rank)));
  std::vector<hsize_t> start(static_cast<size_t>(rank), 0), extent(static_cast<size_t>(rank));
  TESSERA_RETURN_IF_ERROR(
      h5::InFile(path, TESSERA_H5(H5Sget_simple_extent_dims(file_space, extent.data(), nullptr))));
  start[0] = static_cast<hsize_t>(first);
  extent[0] = static_cast<hsize_t>(count);
  TESSERA_RETURN_IF_ERROR(
      h5::InFile(path, TESSERA_H5(H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start.data(),
                                                      nullptr, extent.data(), nullptr))));
  const hsize_t memory_elements = static_cast<hsize_t>(count * row_elements);
  auto memory_space = TESSERA_H5_ID(H5Screate_simple(1, &memory_elements, nullptr));
  if (!memory_space.ok()) return memory_space.status();
  scratch_.resize(static_cast<size_t>(memory_elements) * DTypeSize(dtype));
  return h5::InFile(
      path, TESSERA_H5(H5Dread(dataset.dataset.get(), h5::MemoryType(dtype), memory_space->get(),
                               file_space, H5P_DEFAULT, scratch_.data())));
}

absl::StatusOr<const ShardInfo*> ShardSet::Info(int shard) {
  H5Lock lock;
  TESSERA_ASSIGN_OR_RETURN(OpenShard * open, Shard(shard));
  return &open->info;
}

absl::Status ShardSet::ReadRange(int shard, const std::string& name, DType dtype, int64_t begin,
                                 int64_t count, void* out) {
  H5Lock lock;
  TESSERA_ASSIGN_OR_RETURN(OpenDataset * dataset, Dataset(shard, name, dtype, 1, false));
  return h5::InFile(ShardFile(shard),
                    ReadRange1D(dataset->dataset.get(), name.c_str(), dtype, begin, count, out));
}

std::pair<int, int64_t> ShardSet::Locate(int64_t index) const {
  TESSERA_CHECK(0 <= index && index < num_samples());
  const int shard = static_cast<int>(
      std::upper_bound(shard_begin_.begin(), shard_begin_.end(), index) - shard_begin_.begin() - 1);
  return {shard, index - shard_begin_[shard]};
}

absl::Status ShardSet::ReadRows(const std::string& name, DType dtype, int64_t row_elements,
                                const std::vector<int64_t>& indices, void* out) {
  struct Row {
    int shard;
    int64_t local;
    size_t slot;  // position in `indices` and `out`
  };
  std::vector<Row> rows;
  rows.reserve(indices.size());
  for (size_t slot = 0; slot < indices.size(); ++slot) {
    const auto [shard, local] = Locate(indices[slot]);
    rows.push_back({shard, local, slot});
  }
  // File order, so runs of consecutive rows become one read.
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    return a.shard != b.shard ? a.shard < b.shard : a.local < b.local;
  });

  H5Lock lock;
  const size_t row_bytes = static_cast<size_t>(row_elements) * DTypeSize(dtype);
  for (size_t begin = 0; begin < rows.size();) {
    // [first, last] rows of one shard; repeats of an index share a row.
    size_t end = begin + 1;
    while (end < rows.size() && rows[end].shard == rows[begin].shard &&
           rows[end].local <= rows[end - 1].local + 1) {
      ++end;
    }
    const int shard = rows[begin].shard;
    const int64_t first = rows[begin].local;
    const int64_t count = rows[end - 1].local - first + 1;
    TESSERA_ASSIGN_OR_RETURN(OpenDataset * dataset,
                             Dataset(shard, name, dtype, row_elements, row_elements == 1));
    const uint8_t* source;
    if (!dataset->whole.empty()) {
      source = dataset->whole.data() + static_cast<size_t>(first) * row_bytes;
    } else {
      TESSERA_RETURN_IF_ERROR(ReadRun(*dataset, shard, dtype, row_elements, first, count));
      source = scratch_.data();
    }
    for (size_t i = begin; i < end; ++i) {
      std::memcpy(static_cast<uint8_t*>(out) + rows[i].slot * row_bytes,
                  source + static_cast<size_t>(rows[i].local - first) * row_bytes, row_bytes);
    }
    begin = end;
  }
  return absl::OkStatus();
}

}  // namespace tessera
