// Fuzz target: a checkpoint as `tessera ckpt` and `train --resume` read it
// (runtime/checkpoint: ReadCheckpointManifest, the manifest checks,
// VerifyCheckpoint, ListCheckpoints, ReadGlobalTensor, ExportCheckpoint).
//
// Input: a serialized CheckpointManifest (manifest.pb) followed by 4 control
// bytes (the last 4). The manifest goes into <run>/checkpoints/step_N (N its
// step, or another when the control says so); rank files are written here for
// its first ranks with the pieces it declares (at most 4096 elements each),
// checksums correct or not. Nothing may crash, leak, overflow or allocate
// what the files do not hold.
#include <fuzzer/FuzzedDataProvider.h>
#include <hdf5.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "fuzz/scratch_dir.h"
#include "google/protobuf/stubs/logging.h"
#include "runtime/checkpoint/checkpoint_tools.h"
#include "runtime/checkpoint/crc32c.h"
#include "runtime/checkpoint/manifest_checks.h"
#include "runtime/checkpoint/sharded_checkpoint.h"

namespace tessera {
namespace {

constexpr int kMaxRankFiles = 4;
constexpr int64_t kMaxPieceElements = 4096;

void WriteInt64s(hid_t object, const char* name, const std::vector<int64_t>& values) {
  const hsize_t n = values.size();
  hid_t space = n == 0 ? H5Screate(H5S_NULL) : H5Screate_simple(1, &n, nullptr);
  hid_t attr = H5Acreate2(object, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  if (n > 0) H5Awrite(attr, H5T_NATIVE_INT64, values.data());
  H5Aclose(attr);
  H5Sclose(space);
}

void WriteString(hid_t object, const char* name, const std::string& value) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, std::max<size_t>(1, value.size()));
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  std::string padded = value;
  padded.resize(std::max<size_t>(1, value.size()));
  H5Awrite(attr, type, padded.data());
  H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
}

// One piece's dataset, as the writer lays it out (1-D of its elements),
// with its descriptors as attributes. Returns the CRC-32C of its data.
uint32_t WritePiece(hid_t file, const CheckpointTensor& tensor, const CheckpointPiece& piece,
                    bool nan_values) {
  const int64_t declared = piece.run_end() - piece.run_begin();  // may overflow: untrusted
  const int64_t count = std::clamp<int64_t>(declared, 0, kMaxPieceElements);
  std::vector<float> values(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) values[i] = nan_values && i == 0 ? NAN : 0.25f * i - 3;
  const uint32_t crc = Crc32c(values.data(), values.size() * sizeof(float));
  hid_t links = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(links, 1);
  const hsize_t n = static_cast<hsize_t>(count);
  hid_t space = H5Screate_simple(1, &n, nullptr);
  hid_t dataset = H5Dcreate2(file, piece.dataset().c_str(), H5T_IEEE_F32LE, space, links,
                             H5P_DEFAULT, H5P_DEFAULT);
  if (dataset >= 0) {
    if (count > 0) {
      H5Dwrite(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
    }
    WriteString(dataset, "name", tensor.name());
    WriteString(dataset, "kind", tensor.kind());
    WriteInt64s(dataset, "global_shape", {tensor.global_shape().begin(), tensor.global_shape().end()});
    WriteInt64s(dataset, "box_offset", {piece.box_offset().begin(), piece.box_offset().end()});
    WriteInt64s(dataset, "box_shape", {piece.box_shape().begin(), piece.box_shape().end()});
    WriteInt64s(dataset, "run", {piece.run_begin(), piece.run_end()});
    WriteInt64s(dataset, "crc32c", {int64_t{crc}});
    H5Dclose(dataset);
  }
  H5Sclose(space);
  H5Pclose(links);
  return crc;
}

void WriteRankFile(const std::string& path, int rank, CheckpointManifest& manifest,
                   uint32_t control) {
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) return;
  WriteString(file, "format", "tessera.checkpoint.rank");
  WriteInt64s(file, "version", {kCheckpointFormatVersion});
  WriteInt64s(file, "rank", {rank});
  WriteInt64s(file, "step", {manifest.step()});
  int written = 0;
  for (CheckpointTensor& tensor : *manifest.mutable_tensors()) {
    for (CheckpointPiece& piece : *tensor.mutable_pieces()) {
      if (piece.rank() != rank || piece.dataset().empty() || piece.dataset().size() > 200 ||
          ++written > 64) {
        continue;
      }
      const uint32_t crc = WritePiece(file, tensor, piece, control & 0x100);
      if (control & 0x200) piece.set_crc32c(crc);  // the manifest agrees with the data
    }
  }
  H5Fclose(file);
}

}  // namespace
}  // namespace tessera

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  // Invalid UTF-8 in a string field is logged by protobuf on every input.
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel, const char*, int,
                                     const std::string&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  FuzzedDataProvider in(data, size);
  const uint32_t control = in.ConsumeIntegral<uint32_t>();  // the last 4 bytes
  const std::string bytes = in.ConsumeRemainingBytesAsString();
  const std::string run = fuzz::FreshScratchDir();
  const std::string checkpoints = run + "/checkpoints";
  CheckpointManifest manifest;
  const bool parsed = manifest.ParseFromString(bytes);
  int64_t step = parsed ? manifest.step() : 1;
  if (control & 1) step = static_cast<int64_t>(control >> 16);  // a directory that disagrees
  if (step < 0 || step > 99999999) step = 7;
  const std::string name = absl::StrFormat("step_%08d", step);
  const std::string dir = checkpoints + "/" + name;
  std::filesystem::create_directories(dir);
  fuzz::WriteBytes(checkpoints + "/latest", name + "\n");
  if (control & 2) std::filesystem::create_directories(checkpoints + "/step_-0000010");
  if (control & 4) std::filesystem::create_directories(checkpoints + "/step_00000003.tmp");

  std::string manifest_bytes = bytes;
  if (parsed) {
    const int ranks = std::clamp(manifest.num_ranks(), 0, kMaxRankFiles);
    for (int rank = 0; rank < ranks; ++rank) {
      if (control & (0x10 << rank)) continue;  // a missing rank file
      std::string file = absl::StrFormat("rank_%05d.h5", rank);
      WriteRankFile(dir + "/" + file, rank, manifest, control);
    }
    if (control & 0x200) manifest_bytes = manifest.SerializeAsString();
  }
  fuzz::WriteBytes(dir + "/manifest.pb", manifest_bytes);

  (void)ListCheckpoints(run);
  (void)ResolveCheckpoint(run);
  (void)VerifyCheckpoint(dir);
  absl::StatusOr<CheckpointManifest> read = ReadCheckpointManifest(dir);
  if (!read.ok()) return 0;
  const int64_t rank_bytes = RankFileBytes(dir, *read);
  for (const CheckpointTensor& tensor : read->tensors()) {
    if (!CheckTensorFitsFiles(dir, tensor, rank_bytes).ok()) continue;
    absl::StatusOr<std::vector<float>> values = ReadGlobalTensor(dir, *read, tensor);
    if (values.ok()) (void)ComputeTensorStats(*values);
  }
  if (control & 0x400) {
    ExportOptions options;
    options.bf16 = control & 0x800;
    options.weights_only = control & 0x1000;
    (void)ExportCheckpoint(dir, run + "/export.h5", options);
  }
  return 0;
}
