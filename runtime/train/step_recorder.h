// StepRecorder: what a task hands the numerics dump (tessera debug
// dump-step, docs/debugging.md) besides the parameters and gradients: every
// input of a micro-batch (random draws included), its outputs, each as this
// rank's piece of a tensor with a global name and a global shape.
//
// A piece sits in its global tensor at `offset` (one entry per dimension);
// when `rows` is not empty, local row i along dimension 0 is global row
// rows[i] instead (a data-parallel replica's samples are every R-th of the
// global batch). Ranks that hold the same piece (tp peers) record it alike;
// the dump keeps one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tensor/tensor.h"

namespace tessera {

struct RecordedPiece {
  std::string name;  // "inputs/noise": the HDF5 path in the dump
  DType dtype = DType::kF32;
  std::vector<int64_t> global_shape, shape, offset, rows;
  std::vector<char> bytes;  // the piece, row-major, shape `shape`
};

class StepRecorder {
 public:
  // Copies `tensor` (host or device memory) as a piece of `name`.
  void Record(const std::string& name, const Tensor& tensor,
              const std::vector<int64_t>& global_shape, const std::vector<int64_t>& offset,
              const std::vector<int64_t>& rows = {});
  // A host vector: global element rows[i] (or i) is values[i] of a global
  // vector of `global_length`.
  void RecordVector(const std::string& name, const std::vector<float>& values,
                    int64_t global_length, const std::vector<int64_t>& rows = {});
  void RecordVector(const std::string& name, const std::vector<int32_t>& values,
                    int64_t global_length, const std::vector<int64_t>& rows = {});

  const std::vector<RecordedPiece>& pieces() const { return pieces_; }

 private:
  std::vector<RecordedPiece> pieces_;
};

}  // namespace tessera
