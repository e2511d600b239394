// What a training run puts in a checkpoint, and how it comes back
// (docs/checkpoints.md): this rank's pieces of the parameters ("param"), the
// EMA weights ("ema") and the AdamW moments ("adam_m", "adam_v"), each
// described by the parameter's ParamInfo (global name, global shape, the
// rank's box), so a checkpoint saved under one layout loads into any other.
//
// The AdamW moments of one optimizer cover a range of the flat buffer (the
// whole of it, or a ZeRO-1 shard), which cuts parameters at arbitrary
// elements: each parameter it touches becomes a run of that parameter's box.
// Under ZeRO-1 the tp ranks of a replica shard their own flat buffers, whose
// runs of a tp-replicated parameter need not line up; only tp rank 0 writes
// those, so every element is stored exactly once.
#pragma once

#include <string>
#include <vector>

#include "runtime/checkpoint/sharded_checkpoint.h"
#include "runtime/nn/parameter.h"
#include "runtime/optim/adamw.h"

namespace tessera {

// Host copies of a device run's flat buffers: checkpoints are written from,
// and loaded into, host memory. Host(buffer, refresh) gives the copy of a
// buffer (made on first use; copied from the device when `refresh`);
// WriteBack() copies every one back to its buffer. A host buffer is its own
// copy (nothing is copied).
class HostStateMirror {
 public:
  float* Host(const Tensor& buffer, bool refresh);
  void WriteBack();

 private:
  std::vector<std::pair<Tensor, Tensor>> copies_;  // (device buffer, host copy)
};

struct TrainingState {
  ParameterStore* store = nullptr;
  float* ema = nullptr;  // [store->numel()] host memory, null when EMA is off
  std::vector<AdamW*> optimizers;
  int tp_rank = 0;  // this rank's tp coordinate
  // Where the parameters and moments are read and written when they live on
  // a device (the copies must be made first: Host(..., refresh)); null: the
  // buffers are host memory.
  HostStateMirror* mirror = nullptr;
};

// Copies of every piece this rank saves, into `pieces`: when it already
// holds the same pieces (the previous save's snapshot) their buffers are
// reused, since touching fresh pages costs more than the copy itself.
void SnapshotPieces(const TrainingState& state, std::vector<SavePiece>* pieces);

// The pieces to fill on load: all of SnapshotPieces' (plus the tp-replicated
// optimizer runs that only tp rank 0 saves), or with `parameters_only` the
// "param" pieces alone (checkpoint.load: initialize from a checkpoint).
std::vector<LoadPiece> LoadTargets(const TrainingState& state, bool parameters_only);

}  // namespace tessera
