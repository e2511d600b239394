// SparseParameters: parameters a model keeps and updates outside the flat
// buffers — row-sharded embedding tables whose gradient reaches only the
// rows a step touched, updated by a row-wise sparse optimizer (as torchrec's
// fused embedding optimizers are). The trainer drives them beside the dense
// AdamW step:
//
//   - their gradients are complete on their owners after the model's
//     backward pass (the model exchanges them itself): no data-parallel
//     reduction, and they are not part of the global gradient norm or of
//     gradient clipping;
//   - Step() after the dense step, with the schedule's learning rate;
//   - checkpoints hold their pieces next to the dense ones (kind "param"
//     and the optimizer's kinds), each a box of a global tensor, so any
//     number of shards loads any other;
//   - no EMA: evaluation and weights.h5 use their trained values.
//
// Collective contract: every rank of the model's groups calls Step in the
// same order (it may exchange gradients between replicas of a table).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "runtime/checkpoint/sharded_checkpoint.h"

namespace tessera {

class SparseParameters {
 public:
  virtual ~SparseParameters() = default;

  // Divides the gradients accumulated since the last Step by
  // `global_elements` (the elements the step's loss averages over: the
  // trainer's divisor of the dense gradients) and updates the touched rows
  // with `lr` at optimizer step `step` (from 1).
  virtual absl::Status Step(double lr, double global_elements, int64_t step) = 0;

  // Copies of this rank's pieces (values and optimizer state), appended.
  virtual void AppendSnapshot(std::vector<SavePiece>* pieces) const = 0;
  // The pieces a load fills (all, or with `parameters_only` the values).
  virtual std::vector<LoadPiece> LoadTargets(bool parameters_only) = 0;
  // After a load filled LoadTargets' buffers: parameters kept outside host
  // memory copy them in (host staging, as HostStateMirror's WriteBack).
  virtual absl::Status FinishLoad() { return absl::OkStatus(); }

  // Bytes of host memory its values and optimizer state take on this rank
  // (the trainer's memory plan; device memory is launch's GPU plan's).
  virtual size_t StateBytes() const = 0;
};

}  // namespace tessera
