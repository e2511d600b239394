// The numerics dump's file (tessera debug dump-step; schema in
// docs/debugging.md): one HDF5 file with the initial parameters, the
// gradients, a micro-batch's inputs and outputs and the loss terms, each at
// its global name and global shape whatever the layout that made it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "runtime/nn/parameter.h"
#include "runtime/train/step_recorder.h"

namespace tessera {

// Every rank's recorded pieces, on world rank 0 (empty elsewhere).
// Collective over `world`; null `world`: this process's pieces.
absl::StatusOr<std::vector<RecordedPiece>> GatherRecordedPieces(
    parallel::Communicator* world, const std::vector<RecordedPiece>& mine);

// The whole tensors the pieces make, one per name (pieces of one name laid
// out by their offsets and rows; a piece recorded by several ranks lands on
// the same elements with the same values). Fails naming a piece that does
// not fit its global shape, or a name recorded with two global shapes.
absl::StatusOr<std::vector<RecordedPiece>> AssemblePieces(
    const std::vector<RecordedPiece>& pieces);

struct StepDumpContents {
  std::string model;   // the family's name, e.g. "dit_moe"
  std::string config;  // the effective config, text format
  std::string layout;  // e.g. "world 2 = tp 2 x sp 1 x dp 1, ep 1"
  int64_t step = 1;
  const ParameterStore* parameters = nullptr;  // whole tensors (one process's layout)
  const float* values = nullptr;               // [parameters->numel()]
  const float* gradients = nullptr;            // [parameters->numel()]
  std::vector<RecordedPiece> tensors;          // assembled: inputs/..., outputs/...
  // losses/<name>: the global batch's loss terms, scalars.
  std::vector<std::pair<std::string, double>> losses;
};

// Writes `contents` to `path` (through path.tmp and a rename): a UsageError
// naming the path when it cannot be written.
absl::Status WriteStepDump(const std::string& path, const StepDumpContents& contents);

}  // namespace tessera
