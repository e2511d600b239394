// Writing one shard file of any schema.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "data/schema.h"

namespace tessera {

// One dataset to write: row-major elements of the type the schema gives it.
struct DatasetData {
  std::string name;
  const void* data = nullptr;  // may be null when the dataset is empty
  std::vector<int64_t> dims;
};

// Writes a shard of `schema` (root attributes schema and version, the given
// datasets) to `path`. The file is written under a temporary name, validated
// with ValidateShard, fsynced and only then renamed to `path`. Returns what
// the validator saw.
absl::StatusOr<ShardInfo> WriteShard(const std::string& path, absl::string_view schema,
                                     const std::vector<DatasetData>& datasets);

// An images shard: `pixels` [count, channels, height, width], `labels` [count].
struct ImageArrays {
  const uint8_t* pixels = nullptr;
  const int32_t* labels = nullptr;
  int64_t count = 0;
  int channels = 0, height = 0, width = 0;

  int64_t pixels_per_image() const { return int64_t{channels} * height * width; }
  // Samples [begin, end) as a view into the same arrays.
  ImageArrays Slice(int64_t begin, int64_t end) const;
};
// The two datasets of an images shard, ready for WriteShard.
std::vector<DatasetData> ImagesDatasets(const ImageArrays& images);
absl::StatusOr<ShardInfo> WriteImagesShard(const std::string& path, const ImageArrays& images);

}  // namespace tessera
