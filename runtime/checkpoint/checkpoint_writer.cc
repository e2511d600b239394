// SaveCheckpoint: the writer and the commit protocol (sharded_checkpoint.h).
#include <algorithm>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/text_format.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/checkpoint_files.h"
#include "runtime/checkpoint/crc32c.h"
#include "runtime/checkpoint/sharded_checkpoint.h"
#include "runtime/hdf5/hdf5_util.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

// Identifies a piece up to replication: ranks holding equal keys hold copies.
std::string PieceKey(const PieceDesc& p) {
  return absl::StrCat(p.name, "\x1f", p.kind, "\x1f", absl::StrJoin(p.box_offset, ","), "\x1f",
                      absl::StrJoin(p.box_shape, ","), "\x1f", p.run_begin, "\x1f", p.run_end);
}

// One piece as a single-piece CheckpointTensor (what ranks exchange).
CheckpointTensor ToProto(const PieceDesc& p) {
  CheckpointTensor tensor;
  tensor.set_name(p.name);
  tensor.set_kind(p.kind);
  for (int64_t d : p.global_shape) tensor.add_global_shape(d);
  CheckpointPiece* piece = tensor.add_pieces();
  for (int64_t d : p.box_offset) piece->add_box_offset(d);
  for (int64_t d : p.box_shape) piece->add_box_shape(d);
  piece->set_run_begin(p.run_begin);
  piece->set_run_end(p.run_end);
  return tensor;
}

absl::Status AsCheckpointError(absl::string_view context, absl::Status status) {
  if (status.ok()) return status;
  return WithCategory(absl::Status(status.code(), absl::StrCat(context, ": ", status.message())),
                      ErrorCategory::kCheckpoint);
}

absl::Status WriteInt64Array(hid_t object, const char* name, const std::vector<int64_t>& values) {
  H5Lock lock;
  const hsize_t dims[1] = {values.size()};
  TESSERA_ASSIGN_OR_RETURN(H5Id space, TESSERA_H5_ID(H5Screate_simple(1, dims, nullptr)));
  TESSERA_ASSIGN_OR_RETURN(H5Id attribute,
                           TESSERA_H5_ID(H5Acreate2(object, name, H5T_STD_I64LE, space.get(),
                                                    H5P_DEFAULT, H5P_DEFAULT)));
  const int64_t unused = 0;
  return TESSERA_H5(
      H5Awrite(attribute.get(), H5T_NATIVE_INT64, values.empty() ? &unused : values.data()));
}

// Writes one piece as dataset `path` (a whole box keeps the box's shape so
// tools see it as a matrix; a partial run is 1-D) with its descriptors as
// attributes.
absl::Status WritePieceDataset(hid_t file, const std::string& path, const SavePiece& piece,
                               uint32_t crc) {
  H5Lock lock;
  const PieceDesc& d = piece.desc;
  std::vector<hsize_t> dims;
  if (d.IsFullBox()) {
    dims.assign(d.box_shape.begin(), d.box_shape.end());
  } else {
    dims.push_back(static_cast<hsize_t>(d.size()));
  }
  TESSERA_ASSIGN_OR_RETURN(H5Id dataset, h5::CreateDataset(file, path, H5T_IEEE_F32LE, dims));
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(
      H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, piece.data.data())));
  TESSERA_RETURN_IF_ERROR(h5::WriteStringAttribute(dataset.get(), "name", d.name));
  TESSERA_RETURN_IF_ERROR(h5::WriteStringAttribute(dataset.get(), "kind", d.kind));
  TESSERA_RETURN_IF_ERROR(WriteInt64Array(dataset.get(), "global_shape", d.global_shape));
  TESSERA_RETURN_IF_ERROR(WriteInt64Array(dataset.get(), "box_offset", d.box_offset));
  TESSERA_RETURN_IF_ERROR(WriteInt64Array(dataset.get(), "box_shape", d.box_shape));
  TESSERA_RETURN_IF_ERROR(WriteInt64Array(dataset.get(), "run", {d.run_begin, d.run_end}));
  return h5::WriteIntAttribute(dataset.get(), "crc32c", crc);
}

// What every rank learns from the first exchange: which ranks hold each
// distinct piece, and which one writes it.
struct PiecePlan {
  std::vector<int> holders;
  int writer = -1;
};

// Deterministic on every rank: pieces held by one rank are written by it;
// each replicated piece (in key order) goes to the holder with the fewest
// bytes so far, ties to the lowest rank, which spreads equal pieces
// round-robin.
absl::StatusOr<std::map<std::string, PiecePlan>> PlanWrites(
    const std::vector<CheckpointRankReport>& reports) {
  std::map<std::string, PiecePlan> plans;
  std::map<std::string, int64_t> sizes;
  std::map<std::pair<std::string, std::string>, std::vector<int64_t>> global_shapes;
  for (size_t r = 0; r < reports.size(); ++r) {
    for (const CheckpointTensor& t : reports[r].pieces()) {
      const PieceDesc desc = StoredPieceDesc(t, t.pieces(0));
      auto [shape, inserted] =
          global_shapes.emplace(std::make_pair(desc.name, desc.kind), desc.global_shape);
      if (!inserted && shape->second != desc.global_shape) {
        return CheckpointError(absl::StrCat("ranks disagree on the global shape of ", desc.name,
                                            " (", desc.kind, "): ", ShapeString(shape->second),
                                            " vs ", ShapeString(desc.global_shape), " on rank ",
                                            r));
      }
      const std::string key = PieceKey(desc);
      std::vector<int>& holders = plans[key].holders;
      if (holders.empty() || holders.back() != static_cast<int>(r)) {
        holders.push_back(static_cast<int>(r));
      }
      sizes[key] = desc.size();
    }
  }
  std::vector<int64_t> load(reports.size(), 0);
  for (auto& [key, plan] : plans) {
    if (plan.holders.size() == 1) {
      plan.writer = plan.holders[0];
      load[plan.writer] += sizes[key];
    }
  }
  for (auto& [key, plan] : plans) {
    if (plan.writer >= 0) continue;
    plan.writer = plan.holders[0];
    for (int h : plan.holders) {
      if (load[h] < load[plan.writer]) plan.writer = h;
    }
    load[plan.writer] += sizes[key];
  }
  return plans;
}

// Rank 0, before anything is written: checkpoints/ exists, step_N is not
// already committed, and step_N.tmp is new and empty.
absl::Status PrepareDirectory(const std::string& root, const std::string& final_dir,
                              const std::string& tmp_dir) {
  std::error_code error;
  fs::create_directories(root, error);
  if (error) return CheckpointError(absl::StrCat(root, ": cannot create: ", error.message()));
  if (fs::exists(final_dir, error)) {
    return CheckpointError(absl::StrCat(final_dir, " already exists; a step is saved only once"));
  }
  fs::remove_all(tmp_dir, error);  // left by an interrupted save of this step
  if (error) return CheckpointError(absl::StrCat(tmp_dir, ": cannot remove: ", error.message()));
  fs::create_directory(tmp_dir, error);
  if (error) return CheckpointError(absl::StrCat(tmp_dir, ": cannot create: ", error.message()));
  return absl::OkStatus();
}

// Writes this rank's file with the pieces it was assigned; fills `written`
// with their index entries (rank, file, dataset, checksum, holders).
absl::Status WriteRankFile(const std::string& tmp_dir, int rank, int64_t step,
                           const CheckpointSnapshot& snapshot,
                           const std::map<std::string, PiecePlan>& plans,
                           bool corrupt_first_piece, CheckpointRankReport* written) {
  const std::string file_name = RankFileName(rank);
  const std::string path = absl::StrCat(tmp_dir, "/", file_name);
  H5Id file;
  {
    H5Lock lock;
    auto created = TESSERA_H5_ID(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    if (!created.ok()) return AsCheckpointError(path, created.status());
    file = std::move(*created);
    TESSERA_RETURN_IF_ERROR(AsCheckpointError(
        path, h5::WriteStringAttribute(file.get(), "format", "tessera.checkpoint.rank")));
    TESSERA_RETURN_IF_ERROR(AsCheckpointError(
        path, h5::WriteIntAttribute(file.get(), "version", kCheckpointFormatVersion)));
    TESSERA_RETURN_IF_ERROR(
        AsCheckpointError(path, h5::WriteIntAttribute(file.get(), "rank", rank)));
    TESSERA_RETURN_IF_ERROR(
        AsCheckpointError(path, h5::WriteIntAttribute(file.get(), "step", step)));
  }
  std::set<std::string> done;             // keys written (a rank may list a piece twice)
  std::map<std::string, int> per_tensor;  // datasets per /kind/name so far
  for (const SavePiece& piece : snapshot.pieces) {
    const PieceDesc& d = piece.desc;
    const std::string key = PieceKey(d);
    if (d.size() == 0 || plans.at(key).writer != rank || !done.insert(key).second) continue;
    // Outside the HDF5 lock: the snapshot is the caller's and unchanging.
    const uint32_t crc = Crc32c(piece.data.data(), piece.data.size() * sizeof(float));
    std::string dataset = absl::StrCat("/", d.kind, "/", d.name);
    const int count = per_tensor[dataset]++;
    if (count > 0) absl::StrAppend(&dataset, "#", count);
    const SavePiece* data = &piece;
    SavePiece corrupted;
    if (corrupt_first_piece && written->pieces_size() == 0) {
      corrupted = piece;
      uint32_t bits;
      std::memcpy(&bits, corrupted.data.data(), sizeof(bits));
      bits ^= 1u << 30;
      std::memcpy(corrupted.data.data(), &bits, sizeof(bits));
      data = &corrupted;
    }
    TESSERA_RETURN_IF_ERROR(
        AsCheckpointError(absl::StrCat(path, ": tensor ", d.name, " (", d.kind, ")"),
                          WritePieceDataset(file.get(), dataset, *data, crc)));
    CheckpointTensor* entry = written->add_pieces();
    *entry = ToProto(d);
    CheckpointPiece* stored = entry->mutable_pieces(0);
    stored->set_rank(rank);
    stored->set_file(file_name);
    stored->set_dataset(dataset);
    stored->set_crc32c(crc);
    for (int h : plans.at(key).holders) stored->add_holders(h);
  }
  {
    H5Lock lock;
    TESSERA_RETURN_IF_ERROR(
        AsCheckpointError(path, TESSERA_H5(H5Fflush(file.get(), H5F_SCOPE_GLOBAL))));
    file = H5Id();  // closes
  }
  return FsyncPath(path);
}

CheckpointManifest BuildManifest(const CheckpointMeta& meta, int num_ranks,
                                 const std::vector<CheckpointRankReport>& described,
                                 const std::vector<CheckpointRankReport>& written) {
  CheckpointManifest manifest;
  manifest.set_format_version(kCheckpointFormatVersion);
  manifest.set_step(meta.step);
  manifest.set_samples_seen(meta.samples_seen);
  manifest.set_tokens_seen(meta.tokens_seen);
  manifest.set_sampler_epoch(meta.sampler_epoch);
  manifest.set_sampler_position(meta.sampler_position);
  manifest.set_optimizer_step(meta.optimizer_step);
  *manifest.mutable_mesh() = meta.mesh;
  manifest.set_run_config(meta.run_config);
  manifest.set_num_ranks(num_ranks);
  manifest.set_created_unix_seconds(static_cast<int64_t>(std::time(nullptr)));
  for (const auto& [key, value] : meta.extras) (*manifest.mutable_extras())[key] = value;
  for (const CheckpointRankReport& report : described) manifest.add_rng_state(report.rng_state());

  // Every tensor any rank described, empty ones included, sorted by (name, kind).
  std::map<std::pair<std::string, std::string>, CheckpointTensor> tensors;
  for (const CheckpointRankReport& report : described) {
    for (const CheckpointTensor& t : report.pieces()) {
      CheckpointTensor& entry = tensors[{t.name(), t.kind()}];
      if (!entry.has_name()) {
        entry = t;
        entry.clear_pieces();
      }
    }
  }
  for (const CheckpointRankReport& report : written) {
    for (const CheckpointTensor& t : report.pieces()) {
      *tensors[{t.name(), t.kind()}].add_pieces() = t.pieces(0);
    }
  }
  for (auto& [key, tensor] : tensors) {
    auto* pieces = tensor.mutable_pieces();
    std::sort(pieces->begin(), pieces->end(),
              [](const CheckpointPiece& a, const CheckpointPiece& b) {
                if (std::equal(a.box_offset().begin(), a.box_offset().end(), b.box_offset().begin(),
                               b.box_offset().end())) {
                  return a.run_begin() < b.run_begin();
                }
                return std::lexicographical_compare(a.box_offset().begin(), a.box_offset().end(),
                                                    b.box_offset().begin(), b.box_offset().end());
              });
    *manifest.add_tensors() = std::move(tensor);
  }
  return manifest;
}

// Rank 0, after every rank wrote and fsynced its file.
absl::Status Commit(const std::string& root, const std::string& tmp_dir,
                    const std::string& final_dir, const CheckpointManifest& manifest,
                    const SaveOptions& options) {
  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(manifest, &text)) {
    return CheckpointError("cannot print the manifest as text");
  }
  TESSERA_RETURN_IF_ERROR(WriteFileDurably(tmp_dir + "/manifest.textproto", text));
  // manifest.pb last: its presence marks the directory complete.
  TESSERA_RETURN_IF_ERROR(WriteFileDurably(tmp_dir + "/manifest.pb", manifest.SerializeAsString()));
  TESSERA_RETURN_IF_ERROR(RenameDurably(tmp_dir, final_dir));
  TESSERA_RETURN_IF_ERROR(
      WriteFileDurably(root + "/latest", CheckpointDirName(manifest.step()) + "\n"));

  // Pruning is best effort: the checkpoint is committed whatever happens here.
  std::vector<std::pair<int64_t, std::string>> committed;
  std::error_code error;
  for (auto it = fs::directory_iterator(root, error); !error && it != fs::directory_iterator();
       it.increment(error)) {
    const std::string name = it->path().filename().string();
    long long step = 0;
    char tail[8] = {0};
    const int fields = std::sscanf(name.c_str(), "step_%lld%7s", &step, tail);
    if (fields < 1 || name.rfind("step_", 0) != 0) continue;
    std::error_code remove_error;
    if (fields == 2 && std::string(tail) == ".tmp") {
      if (step < manifest.step()) fs::remove_all(it->path(), remove_error);
    } else if (fields == 1 && step != options.keep_step &&
               IsCommittedCheckpoint(it->path().string())) {
      committed.emplace_back(step, it->path().string());
    }
  }
  std::sort(committed.begin(), committed.end());
  if (options.keep_last > 0 && static_cast<int>(committed.size()) > options.keep_last) {
    for (size_t i = 0; i + options.keep_last < committed.size(); ++i) {
      if (committed[i].first >= manifest.step()) continue;  // never the one just written
      std::error_code remove_error;
      fs::remove_all(committed[i].second, remove_error);
    }
  }
  return absl::OkStatus();
}

// "rank 1: …; rank 3: …" for the ranks whose report carries an error.
std::string CollectErrors(const std::vector<CheckpointRankReport>& reports) {
  std::vector<std::string> errors;
  for (size_t r = 0; r < reports.size(); ++r) {
    if (!reports[r].error().empty())
      errors.push_back(absl::StrCat("rank ", r, ": ", reports[r].error()));
  }
  return absl::StrJoin(errors, "; ");
}

absl::StatusOr<std::vector<CheckpointRankReport>> Exchange(HostGroup& group,
                                                           const CheckpointRankReport& mine) {
  TESSERA_ASSIGN_OR_RETURN(std::vector<std::string> gathered,
                           group.AllGather(mine.SerializeAsString()));
  std::vector<CheckpointRankReport> reports(gathered.size());
  for (size_t r = 0; r < gathered.size(); ++r) {
    if (!reports[r].ParseFromString(gathered[r])) {
      return CheckpointError(absl::StrCat("checkpoint save: unreadable report from rank ", r));
    }
  }
  return reports;
}

}  // namespace

std::string CheckpointDirName(int64_t step) { return absl::StrFormat("step_%08d", step); }
std::string CheckpointsRoot(const std::string& run_dir) { return run_dir + "/checkpoints"; }
std::string RankFileName(int rank) { return absl::StrFormat("rank_%05d.h5", rank); }

absl::Status SaveCheckpoint(HostGroup& group, const std::string& run_dir,
                            const CheckpointSnapshot& snapshot, const SaveOptions& options) {
  const int rank = group.rank();
  const int64_t step = snapshot.meta.step;
  const std::string root = CheckpointsRoot(run_dir);
  const std::string final_dir = absl::StrCat(root, "/", CheckpointDirName(step));
  const std::string tmp_dir = final_dir + ".tmp";
  const std::string context = absl::StrCat("saving checkpoint ", final_dir);

  // 1. Describe: every rank checks its pieces, rank 0 prepares step_N.tmp,
  // and all learn every rank's pieces (and any error, so all stop together).
  CheckpointRankReport described;
  described.set_rng_state(snapshot.meta.rng_state);
  absl::Status local = step < 0 ? CheckpointError("negative step") : absl::OkStatus();
  for (const SavePiece& piece : snapshot.pieces) {
    if (!local.ok()) break;
    local = ValidatePiece(piece.desc);
    if (local.ok() && static_cast<int64_t>(piece.data.size()) != piece.desc.size()) {
      local =
          CheckpointError(absl::StrCat("piece ", piece.desc.ToString(), " has ", piece.data.size(),
                                       " values for ", piece.desc.size(), " elements"));
    }
    *described.add_pieces() = ToProto(piece.desc);
  }
  if (local.ok() && rank == 0) local = PrepareDirectory(root, final_dir, tmp_dir);
  if (!local.ok()) described.set_error(std::string(local.message()));
  TESSERA_ASSIGN_OR_RETURN(std::vector<CheckpointRankReport> descriptions,
                           Exchange(group, described));
  std::string errors = CollectErrors(descriptions);
  if (!errors.empty()) return CheckpointError(absl::StrCat(context, ": ", errors));
  absl::StatusOr<std::map<std::string, PiecePlan>> plans = PlanWrites(descriptions);
  if (!plans.ok()) return AsCheckpointError(context, plans.status());

  // 2. Write and fsync this rank's file; the exchange doubles as the barrier.
  CheckpointRankReport written;
  absl::Status write = WriteRankFile(tmp_dir, rank, step, snapshot, *plans,
                                     options.corrupt_first_piece, &written);
  if (!write.ok()) {
    written.Clear();
    written.set_error(std::string(write.message()));
  }
  TESSERA_ASSIGN_OR_RETURN(std::vector<CheckpointRankReport> writes, Exchange(group, written));
  errors = CollectErrors(writes);

  // 3. Rank 0 commits (or cleans up) and tells everyone the outcome.
  std::string outcome;
  if (rank == 0) {
    if (errors.empty()) {
      const CheckpointManifest manifest =
          BuildManifest(snapshot.meta, group.size(), descriptions, writes);
      absl::Status committed = Commit(root, tmp_dir, final_dir, manifest, options);
      if (!committed.ok()) outcome = std::string(committed.message());
    } else {
      outcome = errors;
    }
    if (!outcome.empty() && !IsCommittedCheckpoint(final_dir)) {
      std::error_code ignored;
      fs::remove_all(tmp_dir, ignored);
    }
  }
  TESSERA_RETURN_IF_ERROR(group.Broadcast(&outcome, 0));
  if (!outcome.empty()) return CheckpointError(absl::StrCat(context, ": ", outcome));
  return absl::OkStatus();
}

}  // namespace tessera
