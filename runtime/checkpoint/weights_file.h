// A consolidated weights file: one HDF5 file holding every parameter as a
// full tensor under its global name (float32), with root attributes
// `format` = "tessera.weights" and `version` = 1.
//
// A training run writes <run_dir>/weights.h5 when it ends (the EMA weights
// when EMA is on); `tessera sample` reads it. Sharded, resumable checkpoints
// are a different format (docs/checkpoints.md).
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "runtime/nn/parameter.h"

namespace tessera {

// A whole tensor kept outside a ParameterStore (a model's sparse parameters,
// e.g. HSTU's item table): its global name, shape and values.
struct WholeTensor {
  std::string name;
  Shape shape;
  float* data = nullptr;  // shape.numel() floats
};

// Writes the values in `flat` (laid out as `store`'s flat buffer) and the
// `extra` tensors to `path`, atomically (temporary file + rename).
absl::Status SaveWeights(const std::string& path, const ParameterStore& store, const float* flat,
                         const std::vector<WholeTensor>& extra = {});

// Fills `store`'s values and the `extra` tensors from `path`. Every one must
// be present with its global shape; the error lists missing, unexpected and
// mismatched tensors.
absl::Status LoadWeights(const std::string& path, ParameterStore& store,
                         const std::vector<WholeTensor>& extra = {});

}  // namespace tessera
