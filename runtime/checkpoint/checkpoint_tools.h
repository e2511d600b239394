// Inspection and conversion of sharded checkpoints, behind `tessera ckpt`
// (launch/ckpt_command.cc): listing a run's checkpoints, assembling global
// tensors, statistics, integrity verification, comparison and export to one
// consolidated HDF5 file. Single-process; nothing here needs MPI.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/checkpoint/sharded_checkpoint.h"

namespace tessera {

// A checkpoint directory for `path`: itself when it is a step_N directory
// (committed or not: ReadCheckpointManifest decides), else the latest committed
// checkpoint of a run directory or of a checkpoints/ directory.
absl::StatusOr<std::string> ResolveCheckpoint(const std::string& path);

struct CheckpointListing {
  std::string name;  // "step_00000010", "step_00000010.tmp", "step_00000010.superseded"
  std::string path;
  int64_t step = -1;        // -1 when the name does not parse
  bool committed = false;   // has manifest.pb and is named step_N
  bool superseded = false;  // step_N.superseded: moved aside by a resume from an older step
  bool unparseable = false; // named step_* but not step_N[.tmp|.superseded]: never loaded
  bool latest = false;      // what FindLatest returns
  int64_t bytes = 0;        // on disk
};
// Every step_* directory under <run_dir>/checkpoints, ascending by step (a
// .tmp or .superseded directory after the committed one of its step), the
// unparseable ones last.
absl::StatusOr<std::vector<CheckpointListing>> ListCheckpoints(const std::string& run_dir);

// The whole global tensor, assembled from its pieces (checksums checked).
absl::StatusOr<std::vector<float>> ReadGlobalTensor(const std::string& ckpt_dir,
                                                    const CheckpointManifest& manifest,
                                                    const CheckpointTensor& tensor);

// Statistics over the finite values; NaN and Inf are only counted.
struct TensorStats {
  int64_t count = 0;  // all elements
  int64_t nan = 0;
  int64_t inf = 0;
  double min = 0, max = 0, mean = 0, std = 0;  // population std
  double l2 = 0;                               // sqrt(sum of squares)
};
TensorStats ComputeTensorStats(const std::vector<float>& values);

// max |a - b| and max |a - b| / max(|a|, |b|) (0 where both are 0); a NaN on
// one side only is an infinite difference, NaN on both none.
struct TensorDiff {
  double max_abs = 0;
  double max_rel = 0;
};
TensorDiff DiffTensors(const std::vector<float>& a, const std::vector<float>& b);

// Everything `verify` checks: every rank file present; every piece's dataset
// present with its element count, its name/kind attributes and its checksum;
// every tensor covered exactly once (no gaps, no overlapping pieces); no
// tensor larger than the rank files hold. The manifest's own consistency
// (manifest_checks.h) is checked when it is read.
struct VerifyReport {
  int64_t tensors = 0;
  int64_t pieces = 0;
  int64_t bytes = 0;  // of piece data
  std::vector<std::string> problems;
};
// Fails only when the manifest cannot be read or is inconsistent (a
// CheckpointError); problems with the data are in the report.
absl::StatusOr<VerifyReport> VerifyCheckpoint(const std::string& ckpt_dir);

struct ExportOptions {
  bool bf16 = false;  // store bfloat16 bits as uint16 with attribute dtype="bfloat16"
  // Only kind "param", as a weights file (weights_file.h: root attributes
  // format="tessera.weights", version=1, one dataset per global name).
  // Otherwise every kind, as /<kind>/<name>, format="tessera.checkpoint_export".
  bool weights_only = false;
};
// Writes one consolidated HDF5 file of full tensors, atomically.
absl::Status ExportCheckpoint(const std::string& ckpt_dir, const std::string& out_path,
                              const ExportOptions& options);

// fp32 -> bfloat16 bits, rounding to nearest even; NaN stays NaN.
uint16_t FloatToBfloat16(float value);

}  // namespace tessera
