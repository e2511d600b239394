// ResolveMesh's rules: one case per rule with its exact message, layouts that
// fit one world size and not another, and an exhaustive sweep checking that
// exactly the layouts satisfying the divisibility rules resolve.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/mesh/mesh.h"
#include "runtime/base/errors.h"
#include "runtime/config/config.h"

namespace tessera::parallel {
namespace {

// DiT-MoE defaults (input 32, patch 2 -> 256 tokens; hidden 384; 8 experts;
// expert hidden 4 * 384 = 1536; shared expert 2 * 384 = 768) with 12 heads,
// so that tp * sp up to 4 divides them, and a global batch of 840 = lcm(1..8)
// that every dp up to 8 divides.
RunConfig Base() {
  RunConfig config;
  config.mutable_dit_moe()->set_num_heads(12);
  config.mutable_train()->set_global_batch(840);
  return config;
}

RunConfig With(const std::vector<std::string>& overrides) {
  RunConfig config = Base();
  const absl::Status status = ApplyOverrides(&config, overrides);
  EXPECT_TRUE(status.ok()) << status;
  return config;
}

struct RuleCase {
  std::vector<std::string> overrides;
  int world_size;
  std::string message;  // the whole message: every broken rule, joined by "; "
  bool shared_with_config_validation;
};

const std::vector<RuleCase>& RuleCases() {
  static const auto* cases = new std::vector<RuleCase>{
      {{}, 0, "world size 0 must be >= 1", true},
      {{"parallel.tp=0"}, 1, "parallel.tp=0 must be >= 1", true},
      {{"parallel.sp=-1"}, 1, "parallel.sp=-1 must be >= 1", true},
      {{"parallel.ep=0"}, 1, "parallel.ep=0 must be >= 1", true},
      {{"parallel.etp=0"}, 1, "parallel.etp=0 must be >= 1", true},
      {{"parallel.tp=0", "parallel.ep=0"},
       1,
       "parallel.tp=0 must be >= 1; parallel.ep=0 must be >= 1",
       true},
      {{"parallel.tp=2", "parallel.sp=2"},
       6,
       "parallel.tp=2 * parallel.sp=2 = 4 must divide the world size 6",
       true},
      {{"parallel.ep=2"},
       3,
       "parallel.ep=2 * parallel.etp=1 = 2 must divide the world size 3",
       true},
      {{"parallel.etp=2"}, 2, "parallel.etp=2 must be 1 or parallel.tp=1", true},
      {{"parallel.tp=4", "parallel.etp=2"}, 8, "parallel.etp=2 must be 1 or parallel.tp=4", true},
      {{"train.global_batch=32"},
       3,
       "train.global_batch=32 must be divisible by the data-parallel size dp = world size / "
       "(tp * sp) = 3",
       true},
      // A layout for 8 ranks, launched on 6 and on 12.
      {{"parallel.tp=2", "parallel.sp=2", "parallel.ep=4"},
       6,
       "parallel.tp=2 * parallel.sp=2 = 4 must divide the world size 6; "
       "parallel.ep=4 * parallel.etp=1 = 4 must divide the world size 6",
       true},
      {{"parallel.tp=2", "parallel.sp=2", "parallel.ep=4", "train.global_batch=32"},
       12,
       "train.global_batch=32 must be divisible by the data-parallel size dp = world size / "
       "(tp * sp) = 3",
       true},
  };
  return *cases;
}

TEST(ResolveMesh, EachBrokenRuleIsAUsageErrorWithItsExactMessage) {
  for (const RuleCase& c : RuleCases()) {
    SCOPED_TRACE(c.message);
    const absl::StatusOr<MeshShape> shape = ResolveMesh(With(c.overrides), c.world_size);
    ASSERT_FALSE(shape.ok());
    EXPECT_EQ(std::string(shape.status().message()), c.message);
    EXPECT_EQ(ExitCodeFor(shape.status()), 2);
  }
}

TEST(ResolveMesh, RulesSharedWithConfigValidationUseItsWording) {
  for (const RuleCase& c : RuleCases()) {
    if (!c.shared_with_config_validation) continue;
    SCOPED_TRACE(c.message);
    const absl::Status status = ValidateRunConfig(With(c.overrides), c.world_size);
    EXPECT_NE(status.message().find(c.message), absl::string_view::npos) << status;
  }
}

TEST(ResolveMesh, EveryRankOfAnInvalidLayoutFailsWithTheSameMessage) {
  const RunConfig config = With({"parallel.tp=2", "parallel.sp=2", "parallel.ep=4"});
  const absl::Status first = Mesh::Create(config, 6, 0).status();
  ASSERT_FALSE(first.ok());
  for (int rank = 1; rank < 6; ++rank) {
    EXPECT_EQ(Mesh::Create(config, 6, rank).status(), first) << "rank " << rank;
  }
}

TEST(ResolveMesh, ValidLayoutsResolveToTheirSizes) {
  // The token-split case above without tp: 9 % 1 == 0.
  EXPECT_TRUE(ResolveMesh(With({"parallel.sp=1", "model.dit_moe.input_size=6"}), 2).ok());
  // Without a model only the mesh's own rules apply: ep = 3 needs no experts.
  RunConfig no_model;
  no_model.mutable_parallel()->set_ep(3);
  no_model.mutable_train()->set_global_batch(3);
  const absl::StatusOr<MeshShape> shape = ResolveMesh(no_model, 3);
  ASSERT_TRUE(shape.ok()) << shape.status();
  EXPECT_EQ(*shape, (MeshShape{3, 1, 1, 3, 3, 1, 1}));
  // DESIGN.md's 8-rank layout with ZeRO-1 on, etp = tp.
  const absl::StatusOr<MeshShape> full =
      ResolveMesh(With({"parallel.tp=2", "parallel.sp=2", "parallel.ep=2", "parallel.etp=2",
                        "parallel.sequence_parallel=true", "parallel.zero_stage=1"}),
                  8);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(*full, (MeshShape{8, 2, 2, 2, 2, 2, 2}));
}

TEST(Mesh, CreateRefusesARankOutsideTheWorld) {
  EXPECT_EQ(Mesh::Create(Base(), 2, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Mesh::Create(Base(), 2, -1).status().code(), absl::StatusCode::kInvalidArgument);
}

// Every (tp, sp, ep, etp) in [1, world + 1]^4 for worlds 1..10, without a model
// (batch divisible by every dp): resolves exactly when the rules hold.
TEST(ResolveMesh, ResolvesExactlyTheLayoutsThatSatisfyTheDivisibilityRules) {
  int accepted = 0;
  for (int world = 1; world <= 10; ++world) {
    for (int tp = 1; tp <= world + 1; ++tp) {
      for (int sp = 1; sp <= world + 1; ++sp) {
        for (int ep = 1; ep <= world + 1; ++ep) {
          for (int etp = 1; etp <= world + 1; ++etp) {
            RunConfig config;
            config.mutable_parallel()->set_tp(tp);
            config.mutable_parallel()->set_sp(sp);
            config.mutable_parallel()->set_ep(ep);
            config.mutable_parallel()->set_etp(etp);
            config.mutable_train()->set_global_batch(2520);  // lcm(1..10)
            const bool fits =
                world % (tp * sp) == 0 && world % (ep * etp) == 0 && (etp == 1 || etp == tp);
            const absl::StatusOr<MeshShape> shape = ResolveMesh(config, world);
            ASSERT_EQ(shape.ok(), fits) << "world " << world << " tp" << tp << " sp" << sp << " ep"
                                        << ep << " etp" << etp << ": " << shape.status();
            accepted += fits;
          }
        }
      }
    }
  }
  EXPECT_GT(accepted, 0);
}

}  // namespace
}  // namespace tessera::parallel
