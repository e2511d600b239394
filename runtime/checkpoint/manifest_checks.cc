#include "runtime/checkpoint/manifest_checks.h"

#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/piece.h"
#include "runtime/checkpoint/sharded_checkpoint.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

// Size of a regular file, or nullopt when it is absent.
std::optional<int64_t> FileSize(const std::string& path) {
  std::error_code error;
  const auto size = fs::file_size(path, error);
  if (error) return std::nullopt;
  return static_cast<int64_t>(size);
}

// The step a directory's name states; nullopt for names that are not
// step_N or step_N.superseded (a checkpoint copied under another name).
absl::StatusOr<std::optional<int64_t>> StepOfDirectory(const std::string& dir) {
  const std::string filename = fs::path(dir).filename().string();
  absl::string_view name = filename;
  absl::ConsumeSuffix(&name, ".superseded");
  if (!absl::StartsWith(name, "step_")) return std::optional<int64_t>();
  std::optional<int64_t> step = ParseStepDirectoryName(name);
  if (!step) {
    return CheckpointError(absl::StrCat(dir, ": the directory name does not parse as step_N ",
                                        "(N: up to 18 decimal digits)"));
  }
  return step;
}

absl::Status CheckStep(const std::string& dir, const CheckpointManifest& m) {
  if (m.step() < 0) {
    return CheckpointError(absl::StrCat(dir, ": manifest step ", m.step(), " is negative"));
  }
  TESSERA_ASSIGN_OR_RETURN(std::optional<int64_t> named, StepOfDirectory(dir));
  if (named && *named != m.step()) {
    return CheckpointError(absl::StrCat(dir, ": manifest step ", m.step(),
                                        " differs from the directory's step ", *named,
                                        " (a manifest copied or edited into the wrong place)"));
  }
  return absl::OkStatus();
}

absl::Status CheckCounters(const std::string& dir, const CheckpointManifest& m) {
  const std::pair<const char*, int64_t> counters[] = {{"samples_seen", m.samples_seen()},
                                                      {"tokens_seen", m.tokens_seen()},
                                                      {"optimizer_step", m.optimizer_step()}};
  for (const auto& [field, value] : counters) {
    if (value < 0) {
      return CheckpointError(absl::StrCat(dir, ": manifest ", field, " ", value, " is negative"));
    }
  }
  const std::pair<const char*, int64_t> sampler[] = {{"sampler_epoch", m.sampler_epoch()},
                                                     {"sampler_position", m.sampler_position()}};
  for (const auto& [field, value] : sampler) {
    if (value < 0 || value > kMaxSamplerValue) {
      return CheckpointError(absl::StrCat(dir, ": manifest ", field, " ", value,
                                          " is outside [0, 2^48]"));
    }
  }
  return absl::OkStatus();
}

// tessera train's RNG state is "counter seed=S step=N": N must be the step.
absl::Status CheckRngState(const std::string& dir, const CheckpointManifest& m, int rank) {
  const std::string& state = m.rng_state(rank);
  if (!absl::StartsWith(state, "counter ")) return absl::OkStatus();
  const size_t at = state.rfind(" step=");
  int64_t step = -1;
  if (at == std::string::npos || !absl::SimpleAtoi(state.substr(at + 6), &step) ||
      step != m.step()) {
    return CheckpointError(absl::StrCat(dir, ": rank ", rank, "'s RNG state \"",
                                        state.substr(0, 80), "\" does not name step ", m.step()));
  }
  return absl::OkStatus();
}

absl::Status CheckRanks(const std::string& dir, const CheckpointManifest& m) {
  if (m.num_ranks() < 1 || m.num_ranks() > kMaxCheckpointRanks) {
    return CheckpointError(absl::StrCat(dir, ": manifest num_ranks ", m.num_ranks(),
                                        " is outside [1, ", kMaxCheckpointRanks, "]"));
  }
  if (m.rng_state_size() != m.num_ranks()) {
    return CheckpointError(absl::StrCat(dir, ": manifest num_ranks ", m.num_ranks(), " but ",
                                        m.rng_state_size(), " RNG states (one per rank)"));
  }
  for (int rank = 0; rank < m.num_ranks(); ++rank) {
    TESSERA_RETURN_IF_ERROR(CheckRngState(dir, m, rank));
  }
  return absl::OkStatus();
}

// Every piece well formed and in its rank's file; adds its bytes to that file's.
absl::Status CheckPieces(const std::string& dir, const CheckpointManifest& m,
                         std::map<std::string, int64_t>* bytes_by_file) {
  for (const CheckpointTensor& t : m.tensors()) {
    const std::vector<int64_t> shape(t.global_shape().begin(), t.global_shape().end());
    if (!CheckedNumElements(shape)) {
      return CheckpointError(absl::StrCat(dir, ": tensor ", t.name(), " (", t.kind(),
                                          ") declares global shape ", ShapeString(shape),
                                          ": a negative dimension or more elements than int64 "
                                          "holds"));
    }
    for (const CheckpointPiece& p : t.pieces()) {
      TESSERA_RETURN_IF_ERROR(ValidatePiece(StoredPieceDesc(t, p)));
      if (p.rank() < 0 || p.rank() >= m.num_ranks() || p.file() != RankFileName(p.rank())) {
        return CheckpointError(absl::StrCat(dir, ": tensor ", t.name(), " (", t.kind(),
                                            ") has a piece of rank ", p.rank(), " in file \"",
                                            p.file(), "\" (", m.num_ranks(), " rank files)"));
      }
      int64_t& bytes = (*bytes_by_file)[p.file()];
      if (__builtin_add_overflow(bytes, (p.run_end() - p.run_begin()) * int64_t{4}, &bytes)) {
        bytes = std::numeric_limits<int64_t>::max();
      }
    }
  }
  return absl::OkStatus();
}

// A rank file holds at least the bytes of the pieces the manifest puts in it
// (pieces are contiguous fp32 datasets). Absent files are for the readers
// to name when they need them.
absl::Status CheckFileSizes(const std::string& dir,
                            const std::map<std::string, int64_t>& bytes_by_file) {
  for (const auto& [file, declared] : bytes_by_file) {
    const std::optional<int64_t> size = FileSize(absl::StrCat(dir, "/", file));
    if (size && *size < declared) {
      return CheckpointError(absl::StrCat(dir, "/", file, ": the manifest puts ", declared,
                                          " bytes of pieces in it, but the file has ", *size,
                                          " bytes (truncated, or a manifest of another "
                                          "checkpoint)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::optional<int64_t> ParseStepDirectoryName(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, "step_") || name.empty() || name.size() > 18) {
    return std::nullopt;
  }
  int64_t step = 0;
  for (char c : name) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return std::nullopt;
    step = step * 10 + (c - '0');
  }
  return step;
}

absl::Status CheckManifest(const std::string& dir, const CheckpointManifest& manifest) {
  TESSERA_RETURN_IF_ERROR(CheckStep(dir, manifest));
  TESSERA_RETURN_IF_ERROR(CheckCounters(dir, manifest));
  TESSERA_RETURN_IF_ERROR(CheckRanks(dir, manifest));
  std::map<std::string, int64_t> bytes_by_file;
  TESSERA_RETURN_IF_ERROR(CheckPieces(dir, manifest, &bytes_by_file));
  return CheckFileSizes(dir, bytes_by_file);
}

int64_t RankFileBytes(const std::string& dir, const CheckpointManifest& manifest) {
  int64_t total = 0;
  for (int rank = 0; rank < manifest.num_ranks(); ++rank) {
    total += FileSize(absl::StrCat(dir, "/", RankFileName(rank))).value_or(0);
  }
  return total;
}

absl::Status CheckTensorFitsFiles(const std::string& dir, const CheckpointTensor& tensor,
                                  int64_t rank_file_bytes) {
  const std::vector<int64_t> shape(tensor.global_shape().begin(), tensor.global_shape().end());
  const std::optional<int64_t> elements = CheckedNumElements(shape);
  if (elements && *elements * 4 <= rank_file_bytes) return absl::OkStatus();
  return CheckpointError(absl::StrCat(
      dir, ": tensor ", tensor.name(), " (", tensor.kind(), ") declares global shape ",
      ShapeString(shape), " (", elements ? absl::StrCat(*elements * 4, " bytes") : "overflow",
      "), more than the ", rank_file_bytes, " bytes all its rank files hold"));
}

}  // namespace tessera
