#include "runtime/checkpoint/checkpoint_tools.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/checkpoint_files.h"
#include "runtime/checkpoint/manifest_checks.h"
#include "runtime/hdf5/hdf5_util.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

// "step_00000010" -> 10, suffix ""; "step_00000010.tmp" -> 10, ".tmp";
// likewise ".superseded". False for any other name.
bool ParseListedName(absl::string_view name, int64_t* step, std::string* suffix) {
  for (absl::string_view candidate : {".tmp", ".superseded", ""}) {
    absl::string_view stem = name;
    if (!absl::ConsumeSuffix(&stem, candidate)) continue;
    if (std::optional<int64_t> parsed = ParseStepDirectoryName(stem)) {
      *step = *parsed;
      *suffix = std::string(candidate);
      return true;
    }
  }
  return false;
}

std::string Label(const CheckpointTensor& t) { return absl::StrCat(t.name(), " (", t.kind(), ")"); }

// At most this many missing rank files are named one by one.
constexpr int kMissingFilesNamed = 8;

void ReportMissingRankFiles(const std::string& dir, const CheckpointManifest& manifest,
                            VerifyReport* report) {
  std::error_code error;
  int missing = 0;
  for (int r = 0; r < manifest.num_ranks(); ++r) {
    const std::string path = absl::StrCat(dir, "/", RankFileName(r));
    if (fs::exists(path, error)) continue;
    if (++missing <= kMissingFilesNamed) {
      report->problems.push_back(absl::StrCat("missing rank file ", path));
    }
  }
  if (missing > kMissingFilesNamed) {
    report->problems.push_back(absl::StrCat("missing rank files: ", missing, " of ",
                                            manifest.num_ranks(), " in all"));
  }
}

// The dataset's own name and kind attributes agree with the manifest.
bool DatasetTaggedAs(const std::string& dir, const CheckpointTensor& t,
                     const CheckpointPiece& p) {
  H5Lock lock;
  auto file = h5::OpenFileReadOnly(absl::StrCat(dir, "/", p.file()));
  if (!file.ok()) return false;
  auto dataset = TESSERA_H5_ID(H5Dopen2(file->get(), p.dataset().c_str(), H5P_DEFAULT));
  if (!dataset.ok()) return false;
  auto name = h5::ReadStringAttribute(dataset->get(), "name");
  auto kind = h5::ReadStringAttribute(dataset->get(), "kind");
  return name.ok() && kind.ok() && *name == t.name() && *kind == t.kind();
}

// Reads one stored piece (checksum checked) and its attributes.
void VerifyStoredPiece(const std::string& dir, const CheckpointTensor& t,
                       const CheckpointPiece& p, VerifyReport* report) {
  ++report->pieces;
  report->bytes += (p.run_end() - p.run_begin()) * static_cast<int64_t>(sizeof(float));
  auto values = ReadStoredPiece(dir, t, p);
  if (!values.ok()) {
    report->problems.push_back(std::string(values.status().message()));
  } else if (!DatasetTaggedAs(dir, t, p)) {
    report->problems.push_back(absl::StrCat("tensor ", Label(t), ": dataset ", p.dataset(),
                                            " of ", p.file(),
                                            " is tagged with another name or kind"));
  }
}

// Every element of the tensor in exactly one piece.
void ReportCoverage(const CheckpointTensor& t, VerifyReport* report) {
  const std::vector<int64_t> shape(t.global_shape().begin(), t.global_shape().end());
  std::vector<uint8_t> counts(static_cast<size_t>(NumElements(shape)), 0);
  const PieceDesc whole = PieceDesc::Whole(t.name(), t.kind(), shape);
  for (const CheckpointPiece& p : t.pieces()) {
    ForEachOverlapSegment(StoredPieceDesc(t, p), whole, [&](int64_t, int64_t at, int64_t n) {
      for (int64_t i = at; i < at + n; ++i) counts[i] = counts[i] == 255 ? 255 : counts[i] + 1;
    });
  }
  const int64_t gaps = std::count(counts.begin(), counts.end(), 0);
  const int64_t doubles =
      std::count_if(counts.begin(), counts.end(), [](uint8_t c) { return c > 1; });
  if (gaps > 0) {
    report->problems.push_back(absl::StrCat("tensor ", Label(t), ": ", gaps, " of ",
                                            counts.size(), " elements are in no piece"));
  }
  if (doubles > 0) {
    report->problems.push_back(
        absl::StrCat("tensor ", Label(t), ": ", doubles, " elements are in more than one piece"));
  }
}

}  // namespace

absl::StatusOr<std::string> ResolveCheckpoint(const std::string& path) {
  std::error_code error;
  int64_t step;
  std::string suffix;
  if (ParseListedName(fs::path(path).filename().string(), &step, &suffix) ||
      fs::exists(path + "/manifest.pb", error)) {
    if (!fs::is_directory(path, error)) {
      return CheckpointError(absl::StrCat(path, ": no such checkpoint directory"));
    }
    return path;
  }
  if (fs::is_directory(path + "/checkpoints", error)) return FindLatest(path);
  if (fs::exists(path + "/latest", error)) return FindLatest(fs::path(path).parent_path().string());
  return CheckpointError(absl::StrCat(
      path, ": neither a checkpoint directory (step_N/) nor a run directory with checkpoints/"));
}

absl::StatusOr<std::vector<CheckpointListing>> ListCheckpoints(const std::string& run_dir) {
  const std::string root = CheckpointsRoot(run_dir);
  std::error_code error;
  if (!fs::is_directory(root, error)) {
    return CheckpointError(absl::StrCat(root, ": no checkpoints directory"));
  }
  auto latest = FindLatest(run_dir);
  std::vector<CheckpointListing> listings;
  for (auto it = fs::directory_iterator(root, error); !error && it != fs::directory_iterator();
       it.increment(error)) {
    CheckpointListing entry;
    std::string suffix;
    entry.name = it->path().filename().string();
    if (!it->is_directory() || !absl::StartsWith(entry.name, "step_")) continue;
    entry.path = it->path().string();
    entry.unparseable = !ParseListedName(entry.name, &entry.step, &suffix);
    entry.superseded = suffix == ".superseded";
    entry.committed = suffix.empty() && !entry.unparseable && IsCommittedCheckpoint(entry.path);
    entry.latest = latest.ok() && fs::equivalent(*latest, entry.path, error);
    entry.bytes = DiskBytes(entry.path);
    listings.push_back(std::move(entry));
  }
  std::sort(listings.begin(), listings.end(), [](const auto& a, const auto& b) {
    if (a.unparseable != b.unparseable) return b.unparseable;
    return a.step != b.step ? a.step < b.step : a.name < b.name;
  });
  return listings;
}

absl::StatusOr<std::vector<float>> ReadGlobalTensor(const std::string& ckpt_dir,
                                                    const CheckpointManifest& manifest,
                                                    const CheckpointTensor& tensor) {
  TESSERA_RETURN_IF_ERROR(
      CheckTensorFitsFiles(ckpt_dir, tensor, RankFileBytes(ckpt_dir, manifest)));
  LoadPiece whole;
  whole.desc = PieceDesc::Whole(tensor.name(), tensor.kind(),
                                {tensor.global_shape().begin(), tensor.global_shape().end()});
  std::vector<float> values(static_cast<size_t>(whole.desc.size()));
  whole.data = values.data();
  TESSERA_RETURN_IF_ERROR(LoadPieces(ckpt_dir, manifest, {whole}));
  return values;
}

TensorStats ComputeTensorStats(const std::vector<float>& values) {
  TensorStats stats;
  stats.count = static_cast<int64_t>(values.size());
  int64_t finite = 0;
  double sum = 0, squares = 0;
  stats.min = std::numeric_limits<double>::infinity();
  stats.max = -std::numeric_limits<double>::infinity();
  for (float v : values) {
    if (std::isnan(v)) {
      ++stats.nan;
    } else if (std::isinf(v)) {
      ++stats.inf;
    } else {
      ++finite;
      sum += v;
      squares += static_cast<double>(v) * v;
      stats.min = std::min<double>(stats.min, v);
      stats.max = std::max<double>(stats.max, v);
    }
  }
  if (finite == 0) {
    stats.min = stats.max = 0;
    return stats;
  }
  stats.mean = sum / static_cast<double>(finite);
  double deviations = 0;  // second pass: exact for large means too
  for (float v : values) {
    if (std::isfinite(v)) deviations += (v - stats.mean) * (v - stats.mean);
  }
  stats.std = std::sqrt(deviations / static_cast<double>(finite));
  stats.l2 = std::sqrt(squares);
  return stats;
}

TensorDiff DiffTensors(const std::vector<float>& a, const std::vector<float>& b) {
  TensorDiff diff;
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const double x = a[i], y = b[i];
    if (std::isnan(x) || std::isnan(y)) {
      if (std::isnan(x) != std::isnan(y)) diff.max_abs = diff.max_rel = INFINITY;
      continue;
    }
    if (x == y) continue;  // also equal infinities
    const double abs = std::fabs(x - y);
    diff.max_abs = std::max(diff.max_abs, abs);
    diff.max_rel = std::max(diff.max_rel, abs / std::max(std::fabs(x), std::fabs(y)));
  }
  return diff;
}

absl::StatusOr<VerifyReport> VerifyCheckpoint(const std::string& ckpt_dir) {
  TESSERA_ASSIGN_OR_RETURN(CheckpointManifest manifest, ReadCheckpointManifest(ckpt_dir));
  VerifyReport report;
  ReportMissingRankFiles(ckpt_dir, manifest, &report);
  const int64_t rank_file_bytes = RankFileBytes(ckpt_dir, manifest);
  for (const CheckpointTensor& t : manifest.tensors()) {
    ++report.tensors;
    for (const CheckpointPiece& p : t.pieces()) VerifyStoredPiece(ckpt_dir, t, p, &report);
    // The coverage count takes a byte per element: only for tensors the
    // files can hold.
    if (absl::Status fits = CheckTensorFitsFiles(ckpt_dir, t, rank_file_bytes); !fits.ok()) {
      report.problems.push_back(std::string(fits.message()));
    } else {
      ReportCoverage(t, &report);
    }
  }
  return report;
}

uint16_t FloatToBfloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7FFF + ((bits >> 16) & 1);  // round to nearest, ties to even
  return static_cast<uint16_t>(bits >> 16);
}

absl::Status ExportCheckpoint(const std::string& ckpt_dir, const std::string& out_path,
                              const ExportOptions& options) {
  TESSERA_ASSIGN_OR_RETURN(CheckpointManifest manifest, ReadCheckpointManifest(ckpt_dir));
  const std::string temporary = out_path + ".tmp";
  auto fail = [&](const absl::Status& status) {
    std::remove(temporary.c_str());
    return WithCategory(h5::InFile(out_path, status), ErrorCategory::kCheckpoint);
  };
  absl::Status status = [&]() -> absl::Status {
    H5Id file;
    {
      H5Lock lock;
      TESSERA_ASSIGN_OR_RETURN(file, TESSERA_H5_ID(H5Fcreate(temporary.c_str(), H5F_ACC_TRUNC,
                                                             H5P_DEFAULT, H5P_DEFAULT)));
      TESSERA_RETURN_IF_ERROR(h5::WriteStringAttribute(
          file.get(), "format",
          options.weights_only ? "tessera.weights" : "tessera.checkpoint_export"));
      TESSERA_RETURN_IF_ERROR(h5::WriteIntAttribute(file.get(), "version", 1));
      TESSERA_RETURN_IF_ERROR(h5::WriteIntAttribute(file.get(), "step", manifest.step()));
      TESSERA_RETURN_IF_ERROR(
          h5::WriteStringAttribute(file.get(), "dtype", options.bf16 ? "bfloat16" : "float32"));
    }
    for (const CheckpointTensor& t : manifest.tensors()) {
      if (options.weights_only && t.kind() != "param") continue;
      TESSERA_ASSIGN_OR_RETURN(std::vector<float> values, ReadGlobalTensor(ckpt_dir, manifest, t));
      H5Lock lock;
      const std::string path =
          options.weights_only ? t.name() : absl::StrCat(t.kind(), "/", t.name());
      std::vector<hsize_t> dims(t.global_shape().begin(), t.global_shape().end());
      TESSERA_ASSIGN_OR_RETURN(
          H5Id dataset, h5::CreateDataset(file.get(), path,
                                          options.bf16 ? H5T_STD_U16LE : H5T_IEEE_F32LE, dims));
      if (options.bf16) {
        std::vector<uint16_t> bits(values.size());
        std::transform(values.begin(), values.end(), bits.begin(), FloatToBfloat16);
        TESSERA_RETURN_IF_ERROR(TESSERA_H5(H5Dwrite(dataset.get(), H5T_NATIVE_UINT16, H5S_ALL,
                                                    H5S_ALL, H5P_DEFAULT, bits.data())));
        TESSERA_RETURN_IF_ERROR(h5::WriteStringAttribute(dataset.get(), "dtype", "bfloat16"));
      } else {
        TESSERA_RETURN_IF_ERROR(TESSERA_H5(H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL,
                                                    H5S_ALL, H5P_DEFAULT, values.data())));
      }
    }
    H5Lock lock;
    return TESSERA_H5(H5Fflush(file.get(), H5F_SCOPE_GLOBAL));
  }();
  if (!status.ok()) return fail(status);
  status = FsyncPath(temporary);
  if (status.ok()) status = RenameDurably(temporary, out_path);
  if (!status.ok()) return fail(status);
  return absl::OkStatus();
}

}  // namespace tessera
