// Writing a whole data set: shards one after another, then the manifest.
//
// The manifest goes in last, and any manifest already in the folder is removed
// before the first shard is written, so a folder whose writing was interrupted
// is never taken for a (stale or partial) data set.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "data/manifest.h"
#include "data/shard_writer.h"

namespace tessera {

class DatasetWriter {
 public:
  // Creates `dir` (and parents) and removes its manifest if there is one.
  static absl::StatusOr<DatasetWriter> Create(const std::string& dir, absl::string_view schema);

  // Writes the next shard, `dir`/shard-NNNNN.h5, and records its sample count,
  // size and crc32.
  absl::Status AddShard(const std::vector<DatasetData>& datasets);

  // Writes manifest.textproto; the data set exists from here on.
  absl::Status Finish(const std::map<std::string, std::string>& attributes,
                      absl::string_view source);

  const DataManifest& manifest() const { return manifest_; }

 private:
  DatasetWriter(std::string dir, const Schema* schema);
  std::string dir_;
  const Schema* schema_;
  DataManifest manifest_;
};

// Writes an images data set of `images` split into shards of
// `samples_per_shard` (the last may be shorter).
absl::Status WriteImagesDataset(const std::string& dir, const ImageArrays& images, int num_classes,
                                int64_t samples_per_shard, absl::string_view source);

}  // namespace tessera
