// Importer for Fashion-MNIST (and MNIST): IDX files → images data sets.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace tessera {

// Reads from `source_dir` the four IDX files
//   train-images-idx3-ubyte  train-labels-idx1-ubyte
//   t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte
// each gzip-compressed (".gz") or not, and writes two images data sets,
// `out_dir`/train and `out_dir`/test (C = 1, H and W from the files, 10
// classes), in shards of `samples_per_shard`. Errors name the offending file.
absl::Status ImportFashionMnist(const std::string& source_dir, const std::string& out_dir,
                                int64_t samples_per_shard);

// Where Debian's dataset-fashion-mnist package installs the files.
inline constexpr char kFashionMnistSystemDir[] = "/usr/share/datasets/fashion-mnist";

}  // namespace tessera
