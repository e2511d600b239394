// The process mesh: world ranks <-> parallel coordinates, and the process
// groups every parallel feature communicates over (DESIGN.md §3).
//
// Rank order (the only place in tessera that knows it):
//   dense layers:  rank = tp + tp_size * (sp + sp_size * dp)        tp fastest, then sp, then dp
//   expert layers: rank = etp + etp_size * (ep + ep_size * edp)     etp fastest, then ep, then edp
// with dp = world / (tp * sp) and edp = world / (etp * ep) (Megatron's folding:
// the expert layers see the same ranks laid out again, EP carved out of the
// sp x dp ranks, and out of tp too when etp = 1). tp varies fastest so that a
// tp group is a run of consecutive ranks, which launchers place on one node.
//
// A group of a kind holds the ranks whose coordinates agree on every axis
// except the kind's own; its members are listed in ascending world rank,
// which is also the group's own rank order (the index of a rank in the list
// is its rank in the group: for a one-axis group, that axis's coordinate).
// MPI_Comm_split(world, Color(kind), /*key=*/world_rank) makes exactly these
// groups with exactly this order.
//
// Sizes come from RunConfig.parallel; ResolveMesh checks every divisibility
// rule the parallel layers rely on (listed in docs/parallelism.md) before any
// work, with messages that depend on the config and world size only, so every
// rank fails with the same message (UsageError, exit code 2).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/config/config.pb.h"

namespace tessera::parallel {

struct MeshShape {
  int world = 1;
  int tp = 1, sp = 1, dp = 1;    // world = tp * sp * dp
  int ep = 1, etp = 1, edp = 1;  // world = etp * ep * edp
  friend bool operator==(const MeshShape&, const MeshShape&) = default;
};

// Checks every rule of the mesh (docs/parallelism.md, "Validation") for a run
// over `world_size` processes and returns the resolved sizes. All failures are
// reported together, joined by "; ", as one UsageError naming the config
// fields, e.g. "parallel.ep=3 must divide model.dit_moe.moe.num_experts=8". Rules
// shared with ValidateRunConfig use its exact wording.
absl::StatusOr<MeshShape> ResolveMesh(const RunConfig& config, int world_size);

// The groups of DESIGN.md's group table (and two that give names to axes).
enum class GroupKind {
  kTensor,          // tp: activation all-reduce/all-gather/reduce-scatter; replicated-norm grads
  kSequence,        // sp: Ulysses all-to-all sequence <-> heads; Mamba state passing
  kData,            // dp: data-parallel replicas (one per distinct sample stream)
  kDataSequence,    // dp x sp: reduction of dense (non-expert) gradients, ZeRO-1 shards
  kTensorSequence,  // tp x sp: the ranks that split one replica's attention heads
  kExpert,          // ep: all-to-all-v of tokens (MoE dispatch and combine)
  kExpertTensor,    // etp: tensor parallelism inside the experts (the tp group when etp = tp)
  kExpertData,      // edp: reduction of expert gradients
  kWorld,           // every rank
};
inline constexpr GroupKind kAllGroupKinds[] = {
    GroupKind::kTensor,       GroupKind::kSequence,       GroupKind::kData,
    GroupKind::kDataSequence, GroupKind::kTensorSequence, GroupKind::kExpert,
    GroupKind::kExpertTensor, GroupKind::kExpertData,     GroupKind::kWorld};

// "tp", "sp", "dp", "dp_sp", "tp_sp", "ep", "etp", "edp", "world".
absl::string_view GroupKindName(GroupKind kind);

struct Coordinates {
  int tp = 0, sp = 0, dp = 0;
  int etp = 0, ep = 0, edp = 0;
  friend bool operator==(const Coordinates&, const Coordinates&) = default;
};

class Mesh {
 public:
  // ResolveMesh, then places `rank`. A rank outside [0, world_size) is an
  // InvalidArgument error (a launcher bug, not a config error).
  static absl::StatusOr<Mesh> Create(const RunConfig& config, int world_size, int rank);
  // For a shape that came from ResolveMesh (or is otherwise consistent).
  Mesh(const MeshShape& shape, int rank);

  const MeshShape& shape() const { return shape_; }
  int rank() const { return rank_; }
  Coordinates coordinates() const { return CoordinatesOf(shape_, rank_); }

  // Members of this rank's group of `kind`, ascending (= group rank order).
  std::vector<int> Group(GroupKind kind) const { return GroupOf(shape_, rank_, kind); }
  // This rank's index in Group(kind), and the group's size.
  int GroupRank(GroupKind kind) const;
  int GroupSize(GroupKind kind) const { return GroupSizeOf(shape_, kind); }
  // Every group of `kind`, indexed by color: the groups partition the world.
  // Communicator creation walks these (or uses Color) so that every rank
  // takes part in creating every group.
  std::vector<std::vector<int>> AllGroups(GroupKind kind) const {
    return AllGroupsOf(shape_, kind);
  }
  // In [0, world / GroupSize(kind)); equal for exactly the members of one
  // group, and AllGroups(kind)[Color(kind)] == Group(kind).
  int Color(GroupKind kind) const { return ColorOf(shape_, rank_, kind); }
  // For messages: the kind and its members, e.g. "dp[1,3]", "dp_sp[0,2,..,14]".
  std::string GroupName(GroupKind kind) const;

  // The same, for any rank of a shape. Ranks and coordinates out of range are
  // programmer errors (checked, abort).
  static Coordinates CoordinatesOf(const MeshShape& shape, int rank);
  static int RankOf(const MeshShape& shape, int tp, int sp, int dp);
  static int ExpertRankOf(const MeshShape& shape, int etp, int ep, int edp);
  static std::vector<int> GroupOf(const MeshShape& shape, int rank, GroupKind kind);
  static int GroupSizeOf(const MeshShape& shape, GroupKind kind);
  static int ColorOf(const MeshShape& shape, int rank, GroupKind kind);
  static std::vector<std::vector<int>> AllGroupsOf(const MeshShape& shape, GroupKind kind);

 private:
  MeshShape shape_;
  int rank_;
};

}  // namespace tessera::parallel
