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

struct TrainingState {
  ParameterStore* store = nullptr;
  float* ema = nullptr;  // [store->numel()], null when EMA is off
  std::vector<AdamW*> optimizers;
  int tp_rank = 0;  // this rank's tp coordinate
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
