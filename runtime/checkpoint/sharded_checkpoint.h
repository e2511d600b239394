// Sharded, reshardable checkpoints (DESIGN.md §5, docs/checkpoints.md).
//
//   <run_dir>/checkpoints/step_00001000/rank_00000.h5 ... rank_0000N.h5
//                                      /manifest.textproto, manifest.pb
//   <run_dir>/checkpoints/latest          "step_00001000\n"
//
// Every rank passes the pieces it holds (piece.h); pieces that several ranks
// hold identically (replicas) are written once, by one holder chosen to
// spread bytes evenly. Commit protocol: each rank writes and fsyncs its file
// in step_N.tmp/; the ranks exchange what they wrote (an all-gather that is
// also the barrier); rank 0 writes and fsyncs the manifest, renames
// step_N.tmp to step_N, fsyncs checkpoints/, replaces `latest` by
// write-and-rename, prunes, and tells every rank the outcome. If any rank
// fails, no rank commits, `latest` is unchanged and every rank returns a
// CheckpointError naming the failure. A directory without manifest.pb is
// never loaded.
//
// Loading reads by global coordinates: any set of pieces can be filled from
// any saved set over the same global tensors (DP, ZeRO, TP, SP and EP layouts
// change freely). Every stored piece that is read is checked against its
// CRC-32C.
//
// Threads: every HDF5 call holds the process-wide H5Lock (hdf5_util.h), per
// piece, so SaveCheckpoint may run on a background thread while another
// thread reads data shards; the snapshot it writes is owned by the caller and
// must stay alive and unchanged during the call. The HostGroup must be one
// that no other thread uses at the same time. All functions are otherwise
// free of shared state and may run concurrently on different directories.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/checkpoint/host_group.h"
#include "runtime/checkpoint/manifest.pb.h"
#include "runtime/checkpoint/piece.h"

namespace tessera {

inline constexpr int kCheckpointFormatVersion = 1;

// Manifest fields besides the tensor index. Rank 0's values are stored,
// except rng_state, which every rank contributes for itself.
struct CheckpointMeta {
  int64_t step = 0;
  int64_t samples_seen = 0;
  int64_t tokens_seen = 0;
  int64_t sampler_epoch = 0;
  int64_t sampler_position = 0;
  int64_t optimizer_step = 0;
  CheckpointMesh mesh;     // world, tp, sp, dp, ep, etp, edp, zero_stage
  std::string run_config;  // the RunConfig in text format
  std::string rng_state;   // this rank's; manifest.rng_state(rank)
  std::map<std::string, std::string> extras;
};

// An owned host copy of one piece: data.size() == desc.size().
struct SavePiece {
  PieceDesc desc;
  std::vector<float> data;
};

// Everything one rank saves; built on the training thread (copying device
// buffers to host), then handed to SaveCheckpoint, possibly on another thread.
struct CheckpointSnapshot {
  CheckpointMeta meta;
  std::vector<SavePiece> pieces;
};

struct SaveOptions {
  // After committing, keep only the newest `keep_last` committed checkpoints
  // (0 keeps all). Stale step_M.tmp directories with M < step are removed too.
  int keep_last = 0;
  // A committed step pruning never removes (early stopping's best step);
  // -1: none. It does not count against keep_last.
  int64_t keep_step = -1;
  // Test-only (fault.corrupt_write): this rank writes its first piece with
  // one bit flipped after the checksum was taken, as a failing disk would.
  // The checkpoint commits; verify and load then name the piece.
  bool corrupt_first_piece = false;
};

// Collective over `group`. Fails (CheckpointError) without committing when
// step_N already exists committed, any piece is malformed, ranks disagree on
// a tensor's global shape, or any rank fails to write.
absl::Status SaveCheckpoint(HostGroup& group, const std::string& run_dir,
                            const CheckpointSnapshot& snapshot, const SaveOptions& options = {});

// "step_00001000"; "<run_dir>/checkpoints".
std::string CheckpointDirName(int64_t step);
std::string CheckpointsRoot(const std::string& run_dir);
// "rank_00003.h5"
std::string RankFileName(int rank);

// True when `dir` holds a manifest.pb (a committed checkpoint).
bool IsCommittedCheckpoint(const std::string& dir);

// The newest committed checkpoint directory of a run: the one `latest` names
// when it is committed, else the committed step_N with the largest N.
// CheckpointError when there is none.
absl::StatusOr<std::string> FindLatest(const std::string& run_dir);

// Reads and checks `<ckpt_dir>/manifest.pb`: CheckpointError when it is
// absent (an incomplete checkpoint), unparsable, or of a newer format version.
absl::StatusOr<CheckpointManifest> ReadCheckpointManifest(const std::string& ckpt_dir);

// A piece to fill on load: `data` has desc.size() elements.
struct LoadPiece {
  PieceDesc desc;
  float* data = nullptr;
};

struct LoadOptions {
  // Also fail when the checkpoint holds tensors, of a kind that some wanted
  // piece has, that no wanted piece names ("unexpected"). Right when this
  // call loads the whole model (one process); a rank loading its own shards
  // of a larger model leaves it off.
  bool require_all_tensors = false;
};

// Fills every wanted piece from the stored pieces overlapping it. Fails with
// a CheckpointError listing missing, unexpected and shape-mismatched tensors
// by name; naming the rank file when one is missing; naming tensor, dataset
// and file on a checksum mismatch; and naming the tensor when any wanted
// element is not stored.
absl::Status LoadPieces(const std::string& ckpt_dir, const CheckpointManifest& manifest,
                        const std::vector<LoadPiece>& wanted, const LoadOptions& options = {});

// The stored piece's elements, read whole and checked against its CRC-32C.
absl::StatusOr<std::vector<float>> ReadStoredPiece(const std::string& ckpt_dir,
                                                   const CheckpointTensor& tensor,
                                                   const CheckpointPiece& piece);

// The PieceDesc of a stored piece.
PieceDesc StoredPieceDesc(const CheckpointTensor& tensor, const CheckpointPiece& piece);

}  // namespace tessera
