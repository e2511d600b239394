// A checkpoint is what its manifest and its directory both say
// (docs/checkpoints.md, "What a reader checks"). Every reader runs these
// checks before it trusts a number from the manifest, and before it
// allocates anything a manifest declares.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "runtime/checkpoint/manifest.pb.h"

namespace tessera {

// Sane limits on what a manifest may declare (far above any real run).
inline constexpr int kMaxCheckpointRanks = 1 << 20;
// Sampler epoch and position, in samples: 2^48 is ~2.8e14 samples.
inline constexpr int64_t kMaxSamplerValue = int64_t{1} << 48;

// "step_00000010" -> 10: "step_" and 1 to 18 decimal digits, nothing else (no
// sign, no spaces, no suffix). nullopt otherwise.
std::optional<int64_t> ParseStepDirectoryName(absl::string_view name);

// The manifest agrees with itself and with its directory `dir`: step >= 0
// and, when the directory is named step_N (or step_N.superseded), equal to N;
// sampler epoch and position in [0, kMaxSamplerValue]; counters
// non-negative; 1 <= num_ranks <= kMaxCheckpointRanks with one RNG state per
// rank (a "counter ... step=S" state naming this step); every tensor's
// global shape non-negative with an element count that fits in int64 bytes;
// every piece well formed, held by a rank in [0, num_ranks) in that rank's
// file; and every rank file present no smaller than the pieces it declares.
// A CheckpointError naming the field and both values otherwise.
absl::Status CheckManifest(const std::string& dir, const CheckpointManifest& manifest);

// Bytes of the rank files of the checkpoint that exist on disk.
int64_t RankFileBytes(const std::string& dir, const CheckpointManifest& manifest);

// A tensor may be assembled in memory only when its global size is no more
// than all the data the checkpoint's rank files hold: a CheckpointError
// naming the tensor, its declared bytes and the files' bytes otherwise.
absl::Status CheckTensorFitsFiles(const std::string& dir, const CheckpointTensor& tensor,
                                  int64_t rank_file_bytes);

}  // namespace tessera
