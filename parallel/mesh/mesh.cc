// Rank order and process groups. Both layouts (dense tp/sp/dp and expert
// etp/ep/edp) are three-axis mixed-radix numberings of the same world ranks;
// a group kind is one layout plus the set of axes that vary inside the group.
#include "parallel/mesh/mesh.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/base/status.h"

namespace tessera::parallel {
namespace {

constexpr int kAxes = 3;

// Axis sizes, fastest first, and which axes vary inside a group (bit i for axis i).
struct Layout {
  int size[kAxes];
  unsigned varying;
};

Layout LayoutOf(const MeshShape& s, GroupKind kind) {
  const Layout dense = {{s.tp, s.sp, s.dp}, 0};
  const Layout expert = {{s.etp, s.ep, s.edp}, 0};
  auto with = [](Layout layout, unsigned varying) {
    layout.varying = varying;
    return layout;
  };
  switch (kind) {
    case GroupKind::kTensor:
      return with(dense, 0b001);
    case GroupKind::kSequence:
      return with(dense, 0b010);
    case GroupKind::kData:
      return with(dense, 0b100);
    case GroupKind::kDataSequence:
      return with(dense, 0b110);
    case GroupKind::kTensorSequence:
      return with(dense, 0b011);
    case GroupKind::kWorld:
      return with(dense, 0b111);
    case GroupKind::kExpertTensor:
      return with(expert, 0b001);
    case GroupKind::kExpert:
      return with(expert, 0b010);
    case GroupKind::kExpertData:
      return with(expert, 0b100);
  }
  TESSERA_CHECK(false);
  return dense;
}

void CheckShape(const MeshShape& s) {
  TESSERA_CHECK(s.tp >= 1 && s.sp >= 1 && s.dp >= 1 && s.world == s.tp * s.sp * s.dp);
  TESSERA_CHECK(s.etp >= 1 && s.ep >= 1 && s.edp >= 1 && s.world == s.etp * s.ep * s.edp);
}

void Decompose(const Layout& layout, int rank, int coord[kAxes]) {
  for (int axis = 0; axis < kAxes; ++axis) {
    coord[axis] = rank % layout.size[axis];
    rank /= layout.size[axis];
  }
}

int Compose(const Layout& layout, const int coord[kAxes]) {
  int rank = 0;
  for (int axis = kAxes - 1; axis >= 0; --axis) {
    TESSERA_CHECK(coord[axis] >= 0 && coord[axis] < layout.size[axis]);
    rank = rank * layout.size[axis] + coord[axis];
  }
  return rank;
}

bool Varies(const Layout& layout, int axis) { return (layout.varying >> axis) & 1u; }

// "0,1,2,3" for short lists; "0,2,..,14" for longer ones (every group is an
// arithmetic progression of ranks, but the shorthand is only used when true).
std::string RankList(const std::vector<int>& ranks) {
  bool progression = ranks.size() > 4;
  for (size_t i = 2; progression && i < ranks.size(); ++i) {
    progression = ranks[i] - ranks[i - 1] == ranks[1] - ranks[0];
  }
  if (!progression) return absl::StrJoin(ranks, ",");
  return absl::StrCat(ranks[0], ",", ranks[1], ",..,", ranks.back());
}

}  // namespace

absl::string_view GroupKindName(GroupKind kind) {
  switch (kind) {
    case GroupKind::kTensor:
      return "tp";
    case GroupKind::kSequence:
      return "sp";
    case GroupKind::kData:
      return "dp";
    case GroupKind::kDataSequence:
      return "dp_sp";
    case GroupKind::kTensorSequence:
      return "tp_sp";
    case GroupKind::kExpert:
      return "ep";
    case GroupKind::kExpertTensor:
      return "etp";
    case GroupKind::kExpertData:
      return "edp";
    case GroupKind::kWorld:
      return "world";
  }
  return "?";
}

absl::StatusOr<Mesh> Mesh::Create(const RunConfig& config, int world_size, int rank) {
  TESSERA_ASSIGN_OR_RETURN(MeshShape shape, ResolveMesh(config, world_size));
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " is outside the world [0, ", world_size, ")"));
  }
  return Mesh(shape, rank);
}

Mesh::Mesh(const MeshShape& shape, int rank) : shape_(shape), rank_(rank) {
  CheckShape(shape_);
  TESSERA_CHECK(rank >= 0 && rank < shape.world);
}

int Mesh::GroupRank(GroupKind kind) const {
  const Layout layout = LayoutOf(shape_, kind);
  int coord[kAxes];
  Decompose(layout, rank_, coord);
  // Mixed radix over the varying axes, fastest first: the index in Group().
  int index = 0;
  for (int axis = kAxes - 1; axis >= 0; --axis) {
    if (Varies(layout, axis)) index = index * layout.size[axis] + coord[axis];
  }
  return index;
}

std::string Mesh::GroupName(GroupKind kind) const {
  return absl::StrCat(GroupKindName(kind), "[", RankList(Group(kind)), "]");
}

Coordinates Mesh::CoordinatesOf(const MeshShape& shape, int rank) {
  CheckShape(shape);
  TESSERA_CHECK(rank >= 0 && rank < shape.world);
  int dense[kAxes], expert[kAxes];
  Decompose(LayoutOf(shape, GroupKind::kWorld), rank, dense);
  Decompose(LayoutOf(shape, GroupKind::kExpert), rank, expert);
  return Coordinates{dense[0], dense[1], dense[2], expert[0], expert[1], expert[2]};
}

int Mesh::RankOf(const MeshShape& shape, int tp, int sp, int dp) {
  CheckShape(shape);
  const int coord[kAxes] = {tp, sp, dp};
  return Compose(LayoutOf(shape, GroupKind::kWorld), coord);
}

int Mesh::ExpertRankOf(const MeshShape& shape, int etp, int ep, int edp) {
  CheckShape(shape);
  const int coord[kAxes] = {etp, ep, edp};
  return Compose(LayoutOf(shape, GroupKind::kExpert), coord);
}

int Mesh::GroupSizeOf(const MeshShape& shape, GroupKind kind) {
  const Layout layout = LayoutOf(shape, kind);
  int size = 1;
  for (int axis = 0; axis < kAxes; ++axis) {
    if (Varies(layout, axis)) size *= layout.size[axis];
  }
  return size;
}

std::vector<int> Mesh::GroupOf(const MeshShape& shape, int rank, GroupKind kind) {
  CheckShape(shape);
  TESSERA_CHECK(rank >= 0 && rank < shape.world);
  const Layout layout = LayoutOf(shape, kind);
  int coord[kAxes];
  Decompose(layout, rank, coord);
  // Count through the varying axes in mixed radix, fastest first; the fixed
  // axes keep this rank's coordinates. Ranks come out ascending because the
  // varying axes keep their relative significance.
  const int size = GroupSizeOf(shape, kind);
  std::vector<int> members;
  members.reserve(size);
  for (int index = 0; index < size; ++index) {
    int rest = index;
    for (int axis = 0; axis < kAxes; ++axis) {
      if (!Varies(layout, axis)) continue;
      coord[axis] = rest % layout.size[axis];
      rest /= layout.size[axis];
    }
    members.push_back(Compose(layout, coord));
  }
  return members;
}

int Mesh::ColorOf(const MeshShape& shape, int rank, GroupKind kind) {
  CheckShape(shape);
  TESSERA_CHECK(rank >= 0 && rank < shape.world);
  const Layout layout = LayoutOf(shape, kind);
  int coord[kAxes];
  Decompose(layout, rank, coord);
  // Mixed radix over the fixed axes, fastest first: groups are numbered in
  // the order of their lowest rank.
  int color = 0;
  for (int axis = kAxes - 1; axis >= 0; --axis) {
    if (!Varies(layout, axis)) color = color * layout.size[axis] + coord[axis];
  }
  return color;
}

std::vector<std::vector<int>> Mesh::AllGroupsOf(const MeshShape& shape, GroupKind kind) {
  CheckShape(shape);
  std::vector<std::vector<int>> groups(shape.world / GroupSizeOf(shape, kind));
  for (int rank = 0; rank < shape.world; ++rank) {
    groups[ColorOf(shape, rank, kind)].push_back(rank);  // ascending: ranks visited in order
  }
  return groups;
}

}  // namespace tessera::parallel
