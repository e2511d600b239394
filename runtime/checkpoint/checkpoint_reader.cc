// Finding, reading and resharding checkpoints (sharded_checkpoint.h).
#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/checkpoint_files.h"
#include "runtime/checkpoint/crc32c.h"
#include "runtime/checkpoint/manifest_checks.h"
#include "runtime/checkpoint/sharded_checkpoint.h"
#include "runtime/hdf5/hdf5_util.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

std::string StripSlashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

bool EndsWith(const std::string& s, absl::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix.data(), suffix.size()) == 0;
}

std::string TensorLabel(const CheckpointTensor& t) {
  return absl::StrCat(t.name(), " (", t.kind(), ")");
}

// Reads one stored piece from an open rank file and checks its checksum.
absl::StatusOr<std::vector<float>> ReadPieceFrom(hid_t file, const std::string& path,
                                                 const CheckpointTensor& tensor,
                                                 const CheckpointPiece& piece) {
  H5Lock lock;
  const std::string where =
      absl::StrCat("tensor ", TensorLabel(tensor), ": dataset ", piece.dataset(), " of ", path);
  // H5Lexists fails, rather than answering 0, when an intermediate group is
  // missing: both mean the dataset is absent.
  if (H5Lexists(file, piece.dataset().c_str(), H5P_DEFAULT) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return CheckpointError(absl::StrCat(where, " is missing"));
  }
  auto dataset = TESSERA_H5_ID(H5Dopen2(file, piece.dataset().c_str(), H5P_DEFAULT));
  if (!dataset.ok()) return CheckpointError(absl::StrCat(where, ": ", dataset.status().message()));
  auto dims = h5::DatasetDims(dataset->get());
  if (!dims.ok()) return CheckpointError(absl::StrCat(where, ": ", dims.status().message()));
  const int64_t expected = piece.run_end() - piece.run_begin();
  if (NumElements(*dims) != expected) {
    return CheckpointError(absl::StrCat(where, " holds ", NumElements(*dims),
                                        " elements; the manifest says ", expected));
  }
  std::vector<float> values(static_cast<size_t>(expected));
  absl::Status read = TESSERA_H5(
      H5Dread(dataset->get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()));
  if (!read.ok()) return CheckpointError(absl::StrCat(where, ": ", read.message()));
  const uint32_t crc = Crc32c(values.data(), values.size() * sizeof(float));
  if (crc != piece.crc32c()) {
    return CheckpointError(absl::StrFormat(
        "checksum mismatch in %s: stored crc32c %08x, data has %08x (corrupt checkpoint)", where,
        piece.crc32c(), crc));
  }
  return values;
}

absl::StatusOr<H5Id> OpenRankFile(const std::string& path, const CheckpointTensor& tensor) {
  std::error_code error;
  if (!fs::exists(path, error)) {
    return CheckpointError(
        absl::StrCat("missing rank file ", path, " (holds tensor ", TensorLabel(tensor), ")"));
  }
  auto file = h5::OpenFileReadOnly(path);
  if (!file.ok()) {
    return CheckpointError(absl::StrCat("cannot open rank file: ", file.status().message()));
  }
  return file;
}

// The stored tensor each wanted piece comes from (by name, kind and global
// shape); a CheckpointError listing every missing, mismatched and (with
// require_all_tensors) unexpected tensor.
absl::StatusOr<std::vector<const CheckpointTensor*>> MatchWantedTensors(
    const std::string& dir, const CheckpointManifest& manifest,
    const std::vector<LoadPiece>& wanted, const LoadOptions& options) {
  std::map<std::pair<std::string, std::string>, const CheckpointTensor*> index;
  for (const CheckpointTensor& t : manifest.tensors()) index[{t.name(), t.kind()}] = &t;
  std::set<std::string> missing, mismatched, unexpected;
  std::set<std::pair<std::string, std::string>> wanted_tensors;
  std::set<std::string> wanted_kinds;
  std::vector<const CheckpointTensor*> sources(wanted.size(), nullptr);
  for (size_t w = 0; w < wanted.size(); ++w) {
    const PieceDesc& d = wanted[w].desc;
    TESSERA_RETURN_IF_ERROR(ValidatePiece(d));
    wanted_tensors.insert({d.name, d.kind});
    wanted_kinds.insert(d.kind);
    auto it = index.find({d.name, d.kind});
    if (it == index.end()) {
      missing.insert(absl::StrCat(d.name, " (", d.kind, ")"));
      continue;
    }
    const std::vector<int64_t> stored(it->second->global_shape().begin(),
                                      it->second->global_shape().end());
    if (stored != d.global_shape) {
      mismatched.insert(absl::StrCat(d.name, " (", d.kind, "): checkpoint ", ShapeString(stored),
                                     ", model ", ShapeString(d.global_shape)));
      continue;
    }
    sources[w] = it->second;
  }
  if (options.require_all_tensors) {
    for (const CheckpointTensor& t : manifest.tensors()) {
      if (wanted_kinds.count(t.kind()) && !wanted_tensors.count({t.name(), t.kind()})) {
        unexpected.insert(TensorLabel(t));
      }
    }
  }
  if (missing.empty() && mismatched.empty() && unexpected.empty()) return sources;
  return CheckpointError(absl::StrCat(dir, " does not match the model: missing [",
                                      absl::StrJoin(missing, ", "), "], unexpected [",
                                      absl::StrJoin(unexpected, ", "), "], mismatched [",
                                      absl::StrJoin(mismatched, ", "), "]"));
}

// One stored piece to read whole (its checksum covers all of it) and the
// wanted pieces it feeds.
struct ReadTask {
  const CheckpointTensor* tensor;
  const CheckpointPiece* piece;
  std::vector<size_t> targets;  // indices into `wanted`
};

// The stored pieces that feed some wanted piece, grouped by rank file so
// that each file is opened once.
std::map<std::string, std::vector<ReadTask>> PlanReadsByFile(
    const CheckpointManifest& manifest, const std::vector<LoadPiece>& wanted,
    const std::vector<const CheckpointTensor*>& sources) {
  std::map<std::string, std::vector<ReadTask>> by_file;
  for (const CheckpointTensor& t : manifest.tensors()) {
    for (const CheckpointPiece& p : t.pieces()) {
      const PieceDesc stored = StoredPieceDesc(t, p);
      ReadTask task{&t, &p, {}};
      for (size_t w = 0; w < wanted.size(); ++w) {
        if (sources[w] == &t && OverlapElements(stored, wanted[w].desc) > 0)
          task.targets.push_back(w);
      }
      if (!task.targets.empty()) by_file[p.file()].push_back(std::move(task));
    }
  }
  return by_file;
}

// Reads each task's piece from the rank file at `path` and copies its
// overlap into every wanted piece it feeds, marking those elements covered.
absl::Status ReadAndScatter(const std::string& path, const std::vector<ReadTask>& tasks,
                            const std::vector<LoadPiece>& wanted,
                            std::vector<std::vector<bool>>* covered) {
  TESSERA_ASSIGN_OR_RETURN(H5Id file, OpenRankFile(path, *tasks.front().tensor));
  for (const ReadTask& task : tasks) {
    TESSERA_ASSIGN_OR_RETURN(std::vector<float> values,
                             ReadPieceFrom(file.get(), path, *task.tensor, *task.piece));
    const PieceDesc stored = StoredPieceDesc(*task.tensor, *task.piece);
    for (size_t w : task.targets) {
      float* out = wanted[w].data;
      std::vector<bool>& mark = (*covered)[w];
      ForEachOverlapSegment(stored, wanted[w].desc, [&](int64_t from, int64_t to, int64_t n) {
        std::copy_n(values.data() + from, n, out + to);
        std::fill_n(mark.begin() + to, n, true);
      });
    }
  }
  return absl::OkStatus();
}

// A CheckpointError naming the first wanted piece with elements no stored
// piece holds.
absl::Status CheckEveryElementCovered(const std::string& dir, const std::vector<LoadPiece>& wanted,
                                      const std::vector<std::vector<bool>>& covered) {
  for (size_t w = 0; w < wanted.size(); ++w) {
    const auto first_gap = std::find(covered[w].begin(), covered[w].end(), false);
    if (first_gap == covered[w].end()) continue;
    const int64_t gaps = std::count(covered[w].begin(), covered[w].end(), false);
    return CheckpointError(absl::StrCat(
        dir, ": tensor ", wanted[w].desc.name, " (", wanted[w].desc.kind, "): ", gaps, " of ",
        wanted[w].desc.size(), " wanted elements are not stored (first at element ",
        first_gap - covered[w].begin(), " of piece ", wanted[w].desc.ToString(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace

PieceDesc StoredPieceDesc(const CheckpointTensor& tensor, const CheckpointPiece& piece) {
  return PieceDesc::Run(
      tensor.name(), tensor.kind(), {tensor.global_shape().begin(), tensor.global_shape().end()},
      {piece.box_offset().begin(), piece.box_offset().end()},
      {piece.box_shape().begin(), piece.box_shape().end()}, piece.run_begin(), piece.run_end());
}

bool IsCommittedCheckpoint(const std::string& dir) {
  std::error_code error;
  return !EndsWith(StripSlashes(dir), ".tmp") &&
         fs::is_regular_file(StripSlashes(dir) + "/manifest.pb", error);
}

absl::StatusOr<std::string> FindLatest(const std::string& run_dir) {
  const std::string root = CheckpointsRoot(StripSlashes(run_dir));
  std::error_code error;
  if (fs::exists(root + "/latest", error)) {
    auto latest = ReadWholeFile(root + "/latest");
    if (latest.ok()) {
      const std::string dir = absl::StrCat(root, "/", absl::StripAsciiWhitespace(*latest));
      if (!absl::StripAsciiWhitespace(*latest).empty() && IsCommittedCheckpoint(dir)) return dir;
    }
  }
  // No usable `latest` (e.g. a crash between the rename and writing it):
  // the committed step with the largest number.
  int64_t best_step = -1;
  std::string best;
  for (auto it = fs::directory_iterator(root, error); !error && it != fs::directory_iterator();
       it.increment(error)) {
    const std::string name = it->path().filename().string();
    const std::optional<int64_t> step = ParseStepDirectoryName(name);
    if (step && *step > best_step && IsCommittedCheckpoint(it->path().string())) {
      best_step = *step;
      best = it->path().string();
    }
  }
  if (best.empty()) return CheckpointError(absl::StrCat("no committed checkpoint in ", root));
  return best;
}

absl::StatusOr<CheckpointManifest> ReadCheckpointManifest(const std::string& ckpt_dir) {
  const std::string dir = StripSlashes(ckpt_dir);
  const std::string path = dir + "/manifest.pb";
  std::error_code error;
  if (EndsWith(dir, ".tmp") || !fs::is_regular_file(path, error)) {
    return CheckpointError(
        absl::StrCat(dir,
                     " is not a committed checkpoint (no manifest.pb, or a .tmp directory): "
                     "an interrupted save, which is never loaded"));
  }
  TESSERA_ASSIGN_OR_RETURN(std::string bytes, ReadWholeFile(path));
  CheckpointManifest manifest;
  if (!manifest.ParseFromString(bytes)) {
    return CheckpointError(absl::StrCat(path, ": not a readable checkpoint manifest"));
  }
  if (manifest.format_version() < 1) {
    return CheckpointError(absl::StrCat(path, ": no format version; not a tessera manifest"));
  }
  if (manifest.format_version() > kCheckpointFormatVersion) {
    return CheckpointError(
        absl::StrCat(path, ": checkpoint format version ", manifest.format_version(),
                     " is newer than this tessera reads (", kCheckpointFormatVersion,
                     "); use a newer tessera to load it"));
  }
  TESSERA_RETURN_IF_ERROR(CheckManifest(dir, manifest));
  return manifest;
}

absl::StatusOr<std::vector<float>> ReadStoredPiece(const std::string& ckpt_dir,
                                                   const CheckpointTensor& tensor,
                                                   const CheckpointPiece& piece) {
  const std::string path = absl::StrCat(StripSlashes(ckpt_dir), "/", piece.file());
  TESSERA_ASSIGN_OR_RETURN(H5Id file, OpenRankFile(path, tensor));
  return ReadPieceFrom(file.get(), path, tensor, piece);
}

absl::Status LoadPieces(const std::string& ckpt_dir, const CheckpointManifest& manifest,
                        const std::vector<LoadPiece>& wanted, const LoadOptions& options) {
  const std::string dir = StripSlashes(ckpt_dir);
  TESSERA_ASSIGN_OR_RETURN(const std::vector<const CheckpointTensor*> sources,
                           MatchWantedTensors(dir, manifest, wanted, options));
  const std::map<std::string, std::vector<ReadTask>> reads =
      PlanReadsByFile(manifest, wanted, sources);
  std::vector<std::vector<bool>> covered(wanted.size());
  for (size_t w = 0; w < wanted.size(); ++w) {
    covered[w].assign(static_cast<size_t>(wanted[w].desc.size()), false);
  }
  for (const auto& [file_name, tasks] : reads) {
    TESSERA_RETURN_IF_ERROR(ReadAndScatter(absl::StrCat(dir, "/", file_name), tasks, wanted,
                                           &covered));
  }
  return CheckEveryElementCovered(dir, wanted, covered);
}

}  // namespace tessera
