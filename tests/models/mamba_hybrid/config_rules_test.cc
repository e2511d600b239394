// The Mamba hybrid's config rules through the registry (ValidateRun), one
// case per rule on a valid config breaking exactly that rule; the shipped
// configs validate; the size estimate counts exactly the parameters the model
// registers.
#include "models/mamba_hybrid/config_rules.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "models/mamba_hybrid/family.h"
#include "models/mamba_hybrid/pattern.h"
#include "models/registry.h"
#include "runtime/base/errors.h"
#include "runtime/config/config.h"

namespace tessera {
namespace {

RunConfig Defaults() {
  RunConfig config;
  config.mutable_mamba_hybrid();
  config.mutable_data()->set_dir("data/x");
  return config;
}

struct RuleCase {
  std::vector<std::string> overrides;
  std::string message;
};

TEST(MambaHybridConfigRules, DefaultsOfAnEmptyConfigAreValid) {
  const absl::Status status = ValidateRun(Defaults(), 1);
  EXPECT_TRUE(status.ok()) << status;
}

TEST(MambaHybridConfigRules, EachRuleFiresWithItsMessage) {
  const std::vector<RuleCase> cases = {
      {{"model.mamba_hybrid.hidden_size=0"}, "model.mamba_hybrid.hidden_size=0 must be in [1, 65536]"},
      {{"model.mamba_hybrid.pattern=M*Q"}, "'Q' is not a layer symbol"},
      {{"model.mamba_hybrid.pattern=M*"}, "has 2 layers, but model.mamba_hybrid.num_layers=8"},
      {{"model.mamba_hybrid.pattern=MMMMEMMM"}, "MoE layers (E) are not built yet"},
      {{"model.mamba_hybrid.head_dim=48"},
       "model.mamba_hybrid.head_dim=48 must divide expand * model.mamba_hybrid.hidden_size=256 = 512"},
      {{"model.mamba_hybrid.num_groups=3"}, "model.mamba_hybrid.num_groups=3 must divide the Mamba heads"},
      {{"model.mamba_hybrid.num_heads=3"}, "model.mamba_hybrid.num_heads=3 must divide"},
      {{"model.mamba_hybrid.num_query_groups=3"}, "model.mamba_hybrid.num_query_groups=3 must divide"},
      {{"model.mamba_hybrid.dt_min=0"}, "must satisfy 0 < dt_min <= dt_max"},
      {{"model.mamba_hybrid.a_init_min=20"}, "must satisfy 0 < min <= max"},
      {{"model.mamba_hybrid.attention_ratio=0.8", "model.mamba_hybrid.mlp_ratio=0.5"},
       "must lie in [0, 1] with a sum <= 1"},
      {{"data.schema=images"}, "data.schema=\"images\" must be \"tokens\" for model.mamba_hybrid"},
  };
  for (const RuleCase& rule : cases) {
    SCOPED_TRACE(rule.message);
    RunConfig config = Defaults();
    ASSERT_TRUE(ApplyOverrides(&config, rule.overrides).ok());
    const absl::Status status = ValidateRun(config, 1);
    EXPECT_EQ(ExitCodeFor(status), 2);
    EXPECT_TRUE(absl::StrContains(status.message(), rule.message)) << status;
  }
}

TEST(MambaHybridConfigRules, LayoutsNotBuiltYetAreRefusedNamingTheField) {
  RunConfig config = Defaults();
  ASSERT_TRUE(ApplyOverrides(&config, {"parallel.sp=2"}).ok());
  const absl::Status status = ValidateRun(config, 2);
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_TRUE(absl::StrContains(status.message(), "parallel.sp=2")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "not built for it yet")) << status;
  RunConfig dp = Defaults();  // data parallelism is
  EXPECT_TRUE(ValidateRun(dp, 2).ok());
}

TEST(MambaHybridConfigRules, TheShippedConfigsValidate) {
  for (const char* name : {"mamba_hybrid_tiny", "mamba_hybrid_small", "mamba_hybrid_8b"}) {
    absl::StatusOr<RunConfig> config =
        LoadRunConfig(std::string(TESSERA_SOURCE_DIR) + "/configs/" + name + ".textproto");
    ASSERT_TRUE(config.ok()) << name << ": " << config.status();
    const absl::Status status = ValidateRun(*config, 1);
    EXPECT_TRUE(status.ok()) << name << ": " << status;
  }
}

TEST(MambaHybridConfigRules, The8BConfigHasThePapersLayers) {
  absl::StatusOr<RunConfig> config = LoadRunConfig(std::string(TESSERA_SOURCE_DIR) +
                                                   "/configs/mamba_hybrid_8b.textproto");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(*mamba_hybrid::ResolvePattern(config->mamba_hybrid()),
            "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-");
}

TEST(MambaHybridSizeEstimate, CountsExactlyTheRegisteredParameters) {
  for (bool tied : {true, false}) {
    RunConfig config = Defaults();
    ASSERT_TRUE(ApplyOverrides(&config, {"model.mamba_hybrid.pattern=M*-M-*MM",
                                         "model.mamba_hybrid.num_query_groups=2",
                                         "model.mamba_hybrid.num_groups=2",
                                         "model.mamba_hybrid.mlp_activation=SWIGLU",
                                         "model.mamba_hybrid.hidden_size=64"})
                    .ok());
    config.mutable_mamba_hybrid()->set_tie_embeddings(tied);
    absl::StatusOr<std::unique_ptr<mamba_hybrid::MambaHybridModel>> model =
        mamba_hybrid::MambaHybridModel::Build(config);
    ASSERT_TRUE(model.ok()) << model.status();
    double registered = 0;
    for (const ParamInfo& info : (*model)->store().infos()) registered += info.global_shape.numel();
    EXPECT_EQ(mamba_hybrid::EstimateSize(config).parameters, registered);
  }
}

TEST(MambaHybridConfigRules, TheRegistryFindsTheModelByItsConfigField) {
  absl::StatusOr<const ModelFamily*> family = FindModelFamily(Defaults());
  ASSERT_TRUE(family.ok()) << family.status();
  EXPECT_EQ((*family)->name, "mamba_hybrid");
}

}  // namespace
}  // namespace tessera
