// DiT-MoE's config rules, checked through the model registry (ValidateRun):
// one case per rule with its message, on a valid config that breaks exactly
// that rule; the shared sections' rules are tests/runtime/config's.
#include "models/dit_moe/config_rules.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "models/registry.h"
#include "runtime/base/errors.h"
#include "runtime/config/config.h"

namespace tessera {
namespace {

// An empty config with the model chosen and data.dir set: all defaults.
RunConfig Defaults() {
  RunConfig config;
  config.mutable_dit_moe();
  config.mutable_data()->set_dir("data/x");
  return config;
}

// DiT-MoE defaults with 12 heads (tp * sp up to 4 divides them) and a global
// batch of 840 = lcm(1..8) that every dp up to 8 divides: the layout cases.
RunConfig LayoutBase() {
  RunConfig config = Defaults();
  config.mutable_dit_moe()->set_num_heads(12);
  config.mutable_train()->set_global_batch(840);
  return config;
}

struct RuleCase {
  std::vector<std::string> overrides;
  int world_size;
  std::string message;
};

const std::vector<RuleCase>& SizeCases() {
  static const auto* cases = new std::vector<RuleCase>{
      {{"model.dit_moe.input_size=0"}, 1, "model.dit_moe.input_size=0 must be positive"},
      {{"model.dit_moe.in_channels=0"}, 1, "model.dit_moe.in_channels=0 must be positive"},
      {{"model.dit_moe.patch_size=-2"}, 1, "model.dit_moe.patch_size=-2 must be positive"},
      {{"model.dit_moe.hidden_size=0"}, 1, "model.dit_moe.hidden_size=0 must be positive"},
      {{"model.dit_moe.depth=0"}, 1, "model.dit_moe.depth=0 must be positive"},
      {{"model.dit_moe.num_heads=0"}, 1, "model.dit_moe.num_heads=0 must be positive"},
      {{"model.dit_moe.num_classes=0"}, 1, "model.dit_moe.num_classes=0 must be positive"},
      {{"model.dit_moe.moe.num_experts=0"}, 1, "model.dit_moe.moe.num_experts=0 must be positive"},
      {{"model.dit_moe.frequency_embedding_size=0"},
       1,
       "model.dit_moe.frequency_embedding_size=0 must be positive"},
      {{"model.dit_moe.moe.expert_hidden=-1"}, 1, "model.dit_moe.moe.expert_hidden=-1 must be >= 0"},
      {{"model.dit_moe.moe.shared_expert_hidden=-2"},
       1,
       "model.dit_moe.moe.shared_expert_hidden=-2 must be >= -1"},
      {{"model.dit_moe.num_heads=5"},
       1,
       "model.dit_moe.num_heads=5 must divide model.dit_moe.hidden_size=384"},
      {{"model.dit_moe.hidden_size=18"},
       1,
       "head dim model.dit_moe.hidden_size=18 / model.dit_moe.num_heads=6 = 3 must be even"},
      {{"model.dit_moe.input_size=30", "model.dit_moe.patch_size=4"},
       1,
       "model.dit_moe.patch_size=4 must divide model.dit_moe.input_size=30"},
      {{"model.dit_moe.moe.experts_per_token=0"},
       1,
       "model.dit_moe.moe.experts_per_token=0 must be in [1, model.dit_moe.moe.num_experts=8]"},
      {{"model.dit_moe.moe.experts_per_token=9"},
       1,
       "model.dit_moe.moe.experts_per_token=9 must be in [1, model.dit_moe.moe.num_experts=8]"},
      {{"model.dit_moe.class_dropout_prob=1"},
       1,
       "model.dit_moe.class_dropout_prob=1 must be in [0, 1)"},
      {{"model.dit_moe.class_dropout_prob=-0.5"},
       1,
       "model.dit_moe.class_dropout_prob=-0.5 must be in [0, 1)"},
      {{"model.dit_moe.moe.capacity_factor=-1"}, 1, "model.dit_moe.moe.capacity_factor=-1 must be >= 0"},
      {{"model.dit_moe.moe.balance_loss_coef=-0.01"},
       1,
       "model.dit_moe.moe.balance_loss_coef=-0.01 must be >= 0"},
      {{"model.dit_moe.sample_steps=0"}, 1, "model.dit_moe.sample_steps=0 must be >= 1"},
      {{"model.dit_moe.cfg_scale=-1"}, 1, "model.dit_moe.cfg_scale=-1 must be >= 0"},
      {{"model.dit_moe.sample_grid_per_class=-1"},
       1,
       "model.dit_moe.sample_grid_per_class=-1 must be >= 0"},
      {{"model.dit_moe.sample_grid_per_class=2000"},
       1,
       "model.dit_moe.sample_grid_per_class=2000 must be <= 1024"},
      {{"parallel.ep=3"}, 3, "parallel.ep=3 must divide model.dit_moe.moe.num_experts=8"},
      {{"parallel.tp=4"},
       4,
       "model.dit_moe.num_heads=6 must be divisible by parallel.tp * parallel.sp = 4"},
      {{"parallel.sp=3"},
       3,
       "tokens per image (model.dit_moe.input_size=32 / model.dit_moe.patch_size=2)^2 = 256 "
       "must be divisible by parallel.sp=3"},
      {{"data.schema=tokens"}, 1, "data.schema=\"tokens\" must be \"images\" for model.dit_moe"},
  };
  return *cases;
}

const std::vector<RuleCase>& LayoutCases() {
  static const auto* cases = new std::vector<RuleCase>{
      {{"parallel.ep=3"}, 3, "parallel.ep=3 must divide model.dit_moe.moe.num_experts=8"},
      {{"parallel.tp=2", "parallel.sp=2", "model.dit_moe.num_heads=6"},
       4,
       "model.dit_moe.num_heads=6 must be divisible by parallel.tp * parallel.sp = 4"},
      {{"parallel.sp=3"},
       3,
       "tokens per image (model.dit_moe.input_size=32 / model.dit_moe.patch_size=2)^2 = 256 "
       "must be divisible by parallel.sp=3"},
      // (6 / 2)^2 = 9 tokens: fine for sp = 1, not for a token split over tp = 2.
      {{"parallel.tp=2", "model.dit_moe.input_size=6"},
       2,
       "tokens per image (model.dit_moe.input_size=6 / model.dit_moe.patch_size=2)^2 = 9 "
       "must be divisible by parallel.tp * parallel.sp = 2 when parallel.tp > 1"},
      // hidden % tp only fails where num_heads does not divide hidden_size
      // (which ValidateRunConfig reports too).
      {{"parallel.tp=4", "model.dit_moe.hidden_size=30", "model.dit_moe.num_heads=4",
        "model.dit_moe.moe.shared_expert_hidden=-1"},
       4,
       "model.dit_moe.hidden_size=30 must be divisible by parallel.tp=4"},
      // (24 / 2)^2 = 144 and (28 / 2)^2 = 196 tokens split over tp = 3 and 7.
      {{"parallel.tp=3", "parallel.etp=3", "model.dit_moe.moe.expert_hidden=100",
        "model.dit_moe.input_size=24"},
       3,
       "model.dit_moe.moe.expert_hidden=100 must be divisible by parallel.etp=3"},
      {{"parallel.tp=7", "parallel.etp=7", "model.dit_moe.hidden_size=30",
        "model.dit_moe.num_heads=7", "model.dit_moe.moe.shared_expert_hidden=-1",
        "model.dit_moe.input_size=28"},
       7,
       "model.dit_moe.hidden_size=30 must be divisible by parallel.tp=7; "
       "expert hidden width 4 * model.dit_moe.hidden_size=30 = 120 "
       "(model.dit_moe.moe.expert_hidden=0) must be divisible by parallel.etp=7"},
      {{"parallel.tp=3", "model.dit_moe.moe.shared_expert_hidden=100", "model.dit_moe.input_size=24"},
       3,
       "model.dit_moe.moe.shared_expert_hidden=100 must be divisible by parallel.tp=3"},
      {{"parallel.tp=7", "model.dit_moe.hidden_size=30", "model.dit_moe.num_heads=7",
        "model.dit_moe.moe.expert_hidden=128", "model.dit_moe.input_size=28"},
       7,
       "model.dit_moe.hidden_size=30 must be divisible by parallel.tp=7; "
       "shared expert hidden width 2 * model.dit_moe.hidden_size=30 = 60 "
       "(model.dit_moe.moe.shared_expert_hidden=0) must be divisible by parallel.tp=7"},
  };
  return *cases;
}

void ExpectRuleFires(RunConfig config, const RuleCase& rule) {
  SCOPED_TRACE(rule.message);
  ASSERT_TRUE(ApplyOverrides(&config, rule.overrides).ok());
  const absl::Status status = ValidateRun(config, rule.world_size);
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_TRUE(absl::StrContains(status.message(), rule.message)) << status;
}

TEST(DitMoeConfigRules, DefaultsOfAnEmptyDitMoeConfigAreValid) {
  const absl::Status status = ValidateRun(Defaults(), 1);
  EXPECT_TRUE(status.ok()) << status;
}

TEST(DitMoeConfigRules, EachRuleFiresWithItsMessage) {
  for (const RuleCase& rule : SizeCases()) ExpectRuleFires(Defaults(), rule);
}

TEST(DitMoeConfigRules, EachLayoutSplitRuleFiresWithItsMessage) {
  for (const RuleCase& rule : LayoutCases()) ExpectRuleFires(LayoutBase(), rule);
}

TEST(DitMoeConfigRules, ModelAndSharedFailuresAreReportedTogether) {
  RunConfig config = Defaults();
  ASSERT_TRUE(ApplyOverrides(&config, {"train.steps=0", "model.dit_moe.depth=0"}).ok());
  const std::string message(ValidateRun(config, 1).message());
  EXPECT_TRUE(absl::StrContains(message, "train.steps=0 must be >= 1")) << message;
  EXPECT_TRUE(absl::StrContains(message, "model.dit_moe.depth=0 must be positive")) << message;
}

TEST(DitMoeConfigRules, TheRegistryFindsDitMoeByItsConfigField) {
  absl::StatusOr<const ModelFamily*> family = FindModelFamily(Defaults());
  ASSERT_TRUE(family.ok()) << family.status();
  EXPECT_EQ((*family)->name, "dit_moe");
  const absl::Status none = FindModelFamily(RunConfig()).status();
  EXPECT_EQ(ExitCodeFor(none), 2);
  EXPECT_TRUE(absl::StrContains(none.message(), "known: dit_moe")) << none;
}

}  // namespace
}  // namespace tessera
