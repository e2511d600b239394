// Reading a range of a one-dimensional dataset: how variable-length rows
// (a document's tokens, a user's events) are read without reading the whole
// dataset.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/hdf5/hdf5_util.h"
#include "runtime/tensor/dtype.h"

namespace tessera {

// Reads elements [begin, begin + count) of the rank-1 `dataset` as `dtype`
// into `out`. A range outside the dataset is a DataError naming `name`.
// The caller holds H5Lock.
absl::Status ReadRange1D(hid_t dataset, const char* name, DType dtype, int64_t begin, int64_t count,
                         void* out);

}  // namespace tessera
