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
// and loaded into, host memory. The copies are pinned host memory
// (Backend::AllocatePinnedHost), made on first use and kept for the run, so
// a snapshot's device-to-host copies run on the copy engine at full speed
// with no staging. A host buffer is its own copy (nothing is copied).
class HostStateMirror {
 public:
  HostStateMirror() = default;
  ~HostStateMirror();  // frees the pinned copies (the backends outlive it)
  HostStateMirror(const HostStateMirror&) = delete;
  HostStateMirror& operator=(const HostStateMirror&) = delete;

  // Makes the copies of `buffers` that do not exist yet (filled from the
  // device) and, with `refresh`, refills the others: every copy is queued
  // asynchronously on its backend's compute stream, then the host waits
  // once per backend, on an event recorded after the last of them.
  void Fetch(const std::vector<Tensor>& buffers, bool refresh);
  // The copy of one buffer: Fetch({buffer}, refresh), then its host pointer.
  float* Host(const Tensor& buffer, bool refresh);
  // Copies every copy back to its buffer (asynchronously, then one wait, so
  // the host copies may be changed again when it returns).
  void WriteBack();

 private:
  struct Copy {
    Tensor device;
    void* host = nullptr;  // pinned, device.bytes() long
  };
  Copy* Find(const Tensor& buffer);
  // Records an event on each backend that queued copies and waits for it.
  static void WaitForCopies(const std::vector<Backend*>& backends);

  std::vector<Copy> copies_;
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
