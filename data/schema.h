// Shard schemas: which datasets a shard of each kind holds, and the validator
// that checks a shard file against its schema (DESIGN.md §4,
// docs/data-format.md).
//
// Dataset lengths are tied together by named row counts: a dataset's first
// dimension is either a count ("N") or a count plus one ("D+1", an offsets
// array). Every dataset naming the same count must agree, and an offsets
// array must start at 0, never decrease, and end at the count it indexes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/tensor/dtype.h"

namespace tessera {

struct DatasetSpec {
  const char* name;
  DType dtype;
  int rank;
  const char* rows;  // first dimension: "N", "T", "D+1", "U", "U+1", "E"
  bool optional = false;
  const char* offsets_into = nullptr;  // for offsets arrays: the count the last entry equals
};

struct Schema {
  const char* name;
  int version;
  const char* sample_rows;  // the count that is the number of samples: "N", "D" or "U"
  std::vector<DatasetSpec> datasets;

  const DatasetSpec* FindDataset(absl::string_view dataset) const;
};

// Root attribute names every shard carries.
inline constexpr char kSchemaAttribute[] = "schema";
inline constexpr char kVersionAttribute[] = "version";

// images, tokens, interactions.
const std::vector<Schema>& AllSchemas();
// The schema named `name`, or a DataError listing the known ones.
absl::StatusOr<const Schema*> FindSchema(absl::string_view name);

// What a valid shard holds.
struct ShardInfo {
  std::string schema;
  int64_t version = 0;
  int64_t num_samples = 0;
  std::map<std::string, std::vector<int64_t>> dims;  // of every schema dataset present
};

// Opens `path` and checks it against `expected_schema`: the schema and version
// attributes, every required dataset present with the right type and rank,
// consistent lengths and well-formed offsets. Any failure, a truncated or
// non-HDF5 file included, is a DataError whose message starts with `path`.
absl::StatusOr<ShardInfo> ValidateShard(const std::string& path, absl::string_view expected_schema);
// The same for a file already open: `file` is its HDF5 id (hid_t); `path` is
// only used in messages.
absl::StatusOr<ShardInfo> ValidateOpenShard(int64_t file, const std::string& path,
                                            absl::string_view expected_schema);

}  // namespace tessera
