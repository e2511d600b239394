// The mesh's geometry against a brute-force oracle, for every valid layout of
// every world size from 1 to 16: coordinates are assigned by nested loops in
// the documented order (tp fastest, then sp, then dp; etp, then ep, then edp),
// and a group is "every rank whose other coordinates equal mine".
#include "parallel/mesh/mesh.h"

#include <algorithm>
#include <array>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/config/config.pb.h"

namespace tessera::parallel {
namespace {

// A layout to test: the four config sizes and the world size.
struct Layout {
  int world, tp, sp, ep, etp;
};

// Every (tp, sp, ep, etp) that fits `world`: tp * sp | world, etp in {1, tp},
// ep * etp | world.
std::vector<Layout> ValidLayouts(int world) {
  std::vector<Layout> layouts;
  for (int tp = 1; tp <= world; ++tp) {
    if (world % tp != 0) continue;
    for (int sp = 1; sp <= world / tp; ++sp) {
      if ((world / tp) % sp != 0) continue;
      const std::vector<int> etps = tp == 1 ? std::vector<int>{1} : std::vector<int>{1, tp};
      for (int etp : etps) {
        for (int ep = 1; ep <= world / etp; ++ep) {
          if ((world / etp) % ep != 0) continue;
          layouts.push_back({world, tp, sp, ep, etp});
        }
      }
    }
  }
  return layouts;
}

RunConfig ConfigFor(const Layout& layout) {
  RunConfig config;  // no model: only the mesh's own rules apply
  config.mutable_parallel()->set_tp(layout.tp);
  config.mutable_parallel()->set_sp(layout.sp);
  config.mutable_parallel()->set_ep(layout.ep);
  config.mutable_parallel()->set_etp(layout.etp);
  config.mutable_train()->set_global_batch(720720);  // lcm(1..16): every dp divides it
  return config;
}

// The oracle: coordinates by nested loops in the documented order.
std::vector<Coordinates> OracleCoordinates(const Layout& l) {
  std::vector<Coordinates> coords(l.world);
  const int dp = l.world / (l.tp * l.sp);
  int rank = 0;
  for (int d = 0; d < dp; ++d) {
    for (int s = 0; s < l.sp; ++s) {
      for (int t = 0; t < l.tp; ++t, ++rank) {
        coords[rank].tp = t;
        coords[rank].sp = s;
        coords[rank].dp = d;
      }
    }
  }
  const int edp = l.world / (l.etp * l.ep);
  rank = 0;
  for (int d = 0; d < edp; ++d) {
    for (int e = 0; e < l.ep; ++e) {
      for (int t = 0; t < l.etp; ++t, ++rank) {
        coords[rank].etp = t;
        coords[rank].ep = e;
        coords[rank].edp = d;
      }
    }
  }
  return coords;
}

// The coordinates a group of `kind` holds fixed; -1 marks the varying axes.
std::array<int, 6> FixedCoordinates(const Coordinates& c, GroupKind kind) {
  constexpr int kAny = -1;
  switch (kind) {
    case GroupKind::kTensor:
      return {kAny, c.sp, c.dp, kAny, kAny, kAny};
    case GroupKind::kSequence:
      return {c.tp, kAny, c.dp, kAny, kAny, kAny};
    case GroupKind::kData:
      return {c.tp, c.sp, kAny, kAny, kAny, kAny};
    case GroupKind::kDataSequence:
      return {c.tp, kAny, kAny, kAny, kAny, kAny};
    case GroupKind::kTensorSequence:
      return {kAny, kAny, c.dp, kAny, kAny, kAny};
    case GroupKind::kExpert:
      return {kAny, kAny, kAny, c.etp, kAny, c.edp};
    case GroupKind::kExpertTensor:
      return {kAny, kAny, kAny, kAny, c.ep, c.edp};
    case GroupKind::kExpertData:
      return {kAny, kAny, kAny, c.etp, c.ep, kAny};
    case GroupKind::kWorld:
      return {kAny, kAny, kAny, kAny, kAny, kAny};
  }
  return {};
}

std::vector<int> OracleGroup(const std::vector<Coordinates>& coords, int rank, GroupKind kind) {
  std::vector<int> members;
  for (int q = 0; q < static_cast<int>(coords.size()); ++q) {
    if (FixedCoordinates(coords[q], kind) == FixedCoordinates(coords[rank], kind)) {
      members.push_back(q);
    }
  }
  return members;
}

std::set<int> UnionOfGroups(const MeshShape& shape, const std::vector<int>& ranks, GroupKind kind) {
  std::set<int> all;
  for (int q : ranks) {
    for (int member : Mesh::GroupOf(shape, q, kind)) all.insert(member);
  }
  return all;
}

std::string Describe(const Layout& l) {
  return "world " + std::to_string(l.world) + " tp" + std::to_string(l.tp) + " sp" +
         std::to_string(l.sp) + " ep" + std::to_string(l.ep) + " etp" + std::to_string(l.etp);
}

TEST(Mesh, EnumerationCoversEveryValidLayoutUpToSixteenRanks) {
  // Hand count for world 4: (tp, sp) in {(1,1),(1,2),(1,4),(2,1),(2,2),(4,1)};
  // ep choices: tp1 -> etp1, ep 1|2|4 (3); tp2 -> etp1 (3) + etp2 ep 1|2 (2);
  // tp4 -> etp1 (3) + etp4 ep1 (1). 3 * 3 + 2 * 5 + 4 = 23.
  EXPECT_EQ(ValidLayouts(4).size(), 23u);
  EXPECT_EQ(ValidLayouts(1).size(), 1u);
}

TEST(Mesh, EveryValidLayoutMatchesTheBruteForceOracle) {
  int layouts_checked = 0;
  for (int world = 1; world <= 16; ++world) {
    for (const Layout& l : ValidLayouts(world)) {
      SCOPED_TRACE(Describe(l));
      ++layouts_checked;
      const absl::StatusOr<MeshShape> shape_or = ResolveMesh(ConfigFor(l), world);
      ASSERT_TRUE(shape_or.ok()) << shape_or.status();
      const MeshShape& shape = *shape_or;
      EXPECT_EQ(shape, (MeshShape{world, l.tp, l.sp, world / (l.tp * l.sp), l.ep, l.etp,
                                  world / (l.ep * l.etp)}));
      EXPECT_EQ(shape.etp * shape.ep * shape.edp, world);
      EXPECT_EQ(shape.tp * shape.sp * shape.dp, world);

      const std::vector<Coordinates> coords = OracleCoordinates(l);
      for (int rank = 0; rank < world; ++rank) {
        const Coordinates& c = coords[rank];
        ASSERT_EQ(Mesh::CoordinatesOf(shape, rank), c) << "rank " << rank;
        ASSERT_EQ(Mesh::RankOf(shape, c.tp, c.sp, c.dp), rank);
        ASSERT_EQ(Mesh::ExpertRankOf(shape, c.etp, c.ep, c.edp), rank);
        ASSERT_EQ(Mesh(shape, rank).coordinates(), c);
      }

      for (GroupKind kind : kAllGroupKinds) {
        SCOPED_TRACE(std::string(GroupKindName(kind)));
        const std::vector<std::vector<int>> all = Mesh::AllGroupsOf(shape, kind);
        std::vector<int> times_seen(world, 0);
        for (size_t color = 0; color < all.size(); ++color) {
          for (int member : all[color]) ++times_seen[member];
        }
        // The groups of a kind partition the world.
        EXPECT_EQ(times_seen, std::vector<int>(world, 1));

        for (int rank = 0; rank < world; ++rank) {
          const Mesh mesh(shape, rank);
          const std::vector<int> expected = OracleGroup(coords, rank, kind);
          const std::vector<int> group = mesh.Group(kind);
          ASSERT_EQ(group, expected) << "rank " << rank;
          EXPECT_EQ(mesh.GroupSize(kind), static_cast<int>(expected.size()));
          EXPECT_EQ(group[mesh.GroupRank(kind)], rank);
          const int color = mesh.Color(kind);
          ASSERT_GE(color, 0);
          ASSERT_LT(color, static_cast<int>(all.size()));
          EXPECT_EQ(all[color], group);
          for (int q = 0; q < world; ++q) {
            // Colors identify groups exactly; members agree on the group.
            const bool same_group = std::count(expected.begin(), expected.end(), q) == 1;
            EXPECT_EQ(Mesh::ColorOf(shape, q, kind) == color, same_group) << "q " << q;
            if (same_group) {
              EXPECT_EQ(Mesh::GroupOf(shape, q, kind), group) << "q " << q;
            }
          }
        }
      }

      for (int rank = 0; rank < world; ++rank) {
        const Mesh mesh(shape, rank);
        // A tp group is a run of consecutive ranks (one node's fast links).
        const std::vector<int> tp_group = mesh.Group(GroupKind::kTensor);
        for (size_t i = 0; i < tp_group.size(); ++i) {
          EXPECT_EQ(tp_group[i], tp_group[0] + static_cast<int>(i));
        }
        // Two-axis groups are unions of their one-axis groups.
        const std::vector<int> dp_sp = mesh.Group(GroupKind::kDataSequence);
        const std::set<int> dp_sp_set(dp_sp.begin(), dp_sp.end());
        EXPECT_EQ(UnionOfGroups(shape, dp_sp, GroupKind::kSequence), dp_sp_set);
        EXPECT_EQ(UnionOfGroups(shape, dp_sp, GroupKind::kData), dp_sp_set);
        const std::vector<int> tp_sp = mesh.Group(GroupKind::kTensorSequence);
        const std::set<int> tp_sp_set(tp_sp.begin(), tp_sp.end());
        EXPECT_EQ(UnionOfGroups(shape, tp_sp, GroupKind::kTensor), tp_sp_set);
        EXPECT_EQ(UnionOfGroups(shape, tp_sp, GroupKind::kSequence), tp_sp_set);
        // Expert TP is the dense tp group, or this rank alone.
        if (l.etp == l.tp) {
          EXPECT_EQ(mesh.Group(GroupKind::kExpertTensor), tp_group);
        } else {
          EXPECT_EQ(mesh.Group(GroupKind::kExpertTensor), std::vector<int>{rank});
        }
      }
    }
  }
  EXPECT_GT(layouts_checked, 200);
}

// DESIGN.md's worked example (docs/parallelism.md): world 8 = tp2 x sp2 x dp2,
// ep4 etp1 (edp2). Rank 5 = tp 1 + 2 * (sp 0 + 2 * dp 1); as an expert rank,
// 5 = ep 1 + 4 * edp 1.
TEST(Mesh, WorkedExampleOfEightRanksHasTheHandDerivedGroups) {
  RunConfig config;
  config.mutable_parallel()->set_tp(2);
  config.mutable_parallel()->set_sp(2);
  config.mutable_parallel()->set_ep(4);
  const absl::StatusOr<Mesh> mesh = Mesh::Create(config, 8, 5);
  ASSERT_TRUE(mesh.ok()) << mesh.status();
  EXPECT_EQ(mesh->shape(), (MeshShape{8, 2, 2, 2, 4, 1, 2}));
  EXPECT_EQ(mesh->coordinates(), (Coordinates{1, 0, 1, 0, 1, 1}));
  EXPECT_EQ(mesh->Group(GroupKind::kTensor), (std::vector<int>{4, 5}));
  EXPECT_EQ(mesh->Group(GroupKind::kSequence), (std::vector<int>{5, 7}));
  EXPECT_EQ(mesh->Group(GroupKind::kData), (std::vector<int>{1, 5}));
  EXPECT_EQ(mesh->Group(GroupKind::kDataSequence), (std::vector<int>{1, 3, 5, 7}));
  EXPECT_EQ(mesh->Group(GroupKind::kTensorSequence), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(mesh->Group(GroupKind::kExpert), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(mesh->Group(GroupKind::kExpertTensor), (std::vector<int>{5}));
  EXPECT_EQ(mesh->Group(GroupKind::kExpertData), (std::vector<int>{1, 5}));
  EXPECT_EQ(mesh->AllGroups(GroupKind::kDataSequence),
            (std::vector<std::vector<int>>{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(mesh->AllGroups(GroupKind::kExpert),
            (std::vector<std::vector<int>>{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(mesh->GroupRank(GroupKind::kDataSequence), 2);
  EXPECT_EQ(mesh->Color(GroupKind::kTensor), 2);  // groups {0,1} {2,3} {4,5} {6,7}
}

TEST(Mesh, ExpertTensorEqualToTpCarvesExpertsOutOfTheOtherAxes) {
  RunConfig config;
  config.mutable_parallel()->set_tp(2);
  config.mutable_parallel()->set_sp(2);
  config.mutable_parallel()->set_ep(2);
  config.mutable_parallel()->set_etp(2);
  const absl::StatusOr<Mesh> mesh = Mesh::Create(config, 8, 5);
  ASSERT_TRUE(mesh.ok()) << mesh.status();
  // 5 = etp 1 + 2 * (ep 0 + 2 * edp 1).
  EXPECT_EQ(mesh->coordinates(), (Coordinates{1, 0, 1, 1, 0, 1}));
  EXPECT_EQ(mesh->Group(GroupKind::kExpertTensor), (std::vector<int>{4, 5}));
  EXPECT_EQ(mesh->Group(GroupKind::kExpert), (std::vector<int>{5, 7}));
  EXPECT_EQ(mesh->Group(GroupKind::kExpertData), (std::vector<int>{1, 5}));
}

TEST(Mesh, GroupNamesListMembersAndShortenLongProgressions) {
  RunConfig config;
  config.mutable_parallel()->set_tp(2);
  config.mutable_parallel()->set_sp(2);
  config.mutable_parallel()->set_ep(4);
  const absl::StatusOr<Mesh> mesh = Mesh::Create(config, 16, 5);
  ASSERT_TRUE(mesh.ok()) << mesh.status();
  EXPECT_EQ(mesh->GroupName(GroupKind::kTensor), "tp[4,5]");
  EXPECT_EQ(mesh->GroupName(GroupKind::kData), "dp[1,5,9,13]");
  EXPECT_EQ(mesh->GroupName(GroupKind::kDataSequence), "dp_sp[1,3,..,15]");
  EXPECT_EQ(mesh->GroupName(GroupKind::kExpertData), "edp[1,5,9,13]");
  EXPECT_EQ(mesh->GroupName(GroupKind::kWorld), "world[0,1,..,15]");
}

TEST(Mesh, OneProcessIsTheSameCodePathWithGroupsOfOne) {
  const absl::StatusOr<Mesh> mesh = Mesh::Create(RunConfig(), 1, 0);
  ASSERT_TRUE(mesh.ok()) << mesh.status();
  for (GroupKind kind : kAllGroupKinds) {
    EXPECT_EQ(mesh->Group(kind), std::vector<int>{0});
    EXPECT_EQ(mesh->Color(kind), 0);
    EXPECT_EQ(mesh->GroupRank(kind), 0);
  }
}

}  // namespace
}  // namespace tessera::parallel
