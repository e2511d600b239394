// tessera debug compare: two numerics dumps (or any two HDF5 files of
// numeric datasets) dataset by dataset, so a dump made under one layout can
// be checked against another's, or against a reference implementation's
// file written with the same schema (docs/debugging.md).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

struct DatasetDifference {
  std::string name;
  // max |a - b| / max |a| over the dataset (0 when both are all zeros;
  // max |a - b| when a is all zeros and b is not).
  double relative = 0;
  double max_abs_reference = 0;
  bool missing = false;  // in `reference` but not in `other`, or shapes differ
};

// Every dataset of `reference`, compared with the same path in `other`.
// A DataError naming the file when one cannot be read.
absl::StatusOr<std::vector<DatasetDifference>> CompareDumps(const std::string& reference,
                                                            const std::string& other);

}  // namespace tessera
