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
      {{"model.mamba_hybrid.pattern=MMMMEMMM"},
       "model.mamba_hybrid.pattern=\"MMMMEMMM\" has MoE layers (E): set model.mamba_hybrid.moe"},
      {{"model.mamba_hybrid.moe.num_experts=4"},
       "model.mamba_hybrid.moe is set, but model.mamba_hybrid.pattern=\"MMMMMMMM\" has no MoE "
       "layer (E)"},
      {{"model.mamba_hybrid.pattern=MMMMEMMM", "model.mamba_hybrid.moe.experts_per_token=9"},
       "model.mamba_hybrid.moe.experts_per_token=9 must be in [1, model.mamba_hybrid.moe.num_experts=8]"},
      {{"model.mamba_hybrid.pattern=MMMMEMMM", "model.mamba_hybrid.moe.num_experts=4",
        "model.mamba_hybrid.recompute=true", "model.mamba_hybrid.moe.balance_scope=GLOBAL_BATCH"},
       "model.mamba_hybrid.recompute=true and model.mamba_hybrid.moe.balance_scope=GLOBAL_BATCH "
       "cannot be combined"},
      {{"model.mamba_hybrid.head_dim=48"},
       "model.mamba_hybrid.head_dim=48 must divide expand * model.mamba_hybrid.hidden_size=256 = 512"},
      {{"model.mamba_hybrid.num_groups=3"}, "model.mamba_hybrid.num_groups=3 must divide the Mamba heads"},
      {{"model.mamba_hybrid.num_heads=3"}, "model.mamba_hybrid.num_heads=3 must divide"},
      {{"model.mamba_hybrid.num_query_groups=3"}, "model.mamba_hybrid.num_query_groups=3 must divide"},
      {{"model.mamba_hybrid.dt_min=0"}, "must satisfy 0 < dt_min <= dt_max"},
      {{"model.mamba_hybrid.a_init_min=20"}, "must satisfy 0 < min <= max"},
      {{"model.mamba_hybrid.attention_ratio=0.8", "model.mamba_hybrid.mlp_ratio=0.5"},
       "must lie in [0, 1] with a sum <= 1"},
      {{"model.mamba_hybrid.rope_base=-1"}, "model.mamba_hybrid.rope_base=-1 must be >= 0"},
      {{"model.mamba_hybrid.rope_base=10000", "model.mamba_hybrid.num_heads=256"},
       "the attention head dim model.mamba_hybrid.hidden_size=256 / model.mamba_hybrid.num_heads=256 = 1 must be even"},
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

RunConfig Tiny() {
  absl::StatusOr<RunConfig> config =
      LoadRunConfig(std::string(TESSERA_SOURCE_DIR) + "/configs/mamba_hybrid_tiny.textproto");
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

TEST(MambaHybridConfigRules, ModelParallelLayoutsOfTheTinyConfigValidate) {
  // 4 Mamba heads in 2 groups, 4 attention heads over 2 groups, seq_len 32.
  const std::vector<std::pair<std::vector<std::string>, int>> layouts = {
      {{"parallel.tp=2"}, 2},
      {{"parallel.tp=2", "parallel.sequence_parallel=true"}, 2},
      {{"parallel.sp=2"}, 2},
      {{"parallel.sp=4"}, 4},
      {{"parallel.tp=2", "parallel.sp=2", "parallel.zero_stage=1"}, 8},
      {{"parallel.ep=2"}, 2},
      {{"parallel.ep=4", "parallel.tp=2", "parallel.sequence_parallel=true"}, 4},
      {{"parallel.sp=2", "model.mamba_hybrid.mamba_sp_mode=ALL_TO_ALL"}, 2},
      {{"parallel.tp=2", "parallel.sp=2", "model.mamba_hybrid.mamba_sp_mode=ALL_TO_ALL",
        "model.mamba_hybrid.num_groups=4"},
       4},
  };
  for (const auto& [overrides, world] : layouts) {
    RunConfig config = Tiny();
    ASSERT_TRUE(ApplyOverrides(&config, overrides).ok());
    const absl::Status status = ValidateRun(config, world);
    EXPECT_TRUE(status.ok()) << overrides[0] << ": " << status;
  }
}

TEST(MambaHybridConfigRules, LayoutsThatDoNotDivideAreRefusedNamingTheField) {
  const std::vector<std::pair<RuleCase, int>> cases = {
      {{{"parallel.tp=8"},
        "the Mamba heads expand * hidden_size / head_dim = 4 must be divisible by parallel.tp=8"},
       8},
      {{{"parallel.tp=4"}, "model.mamba_hybrid.num_groups=2 must be divisible by parallel.tp=4"},
       4},
      {{{"parallel.tp=2", "model.mamba_hybrid.num_query_groups=1"},
        "model.mamba_hybrid.num_query_groups=1 must be divisible by parallel.tp=2"},
       2},
      {{{"parallel.tp=2", "model.mamba_hybrid.vocab_size=63"},
        "model.mamba_hybrid.vocab_size=63 must be divisible by parallel.tp=2 (the vocabulary "
        "is split over tp; pad it: --set model.mamba_hybrid.vocab_size=64"},
       2},
      {{{"parallel.sp=3"}, "model.mamba_hybrid.seq_len=32 must be divisible by parallel.sp=3"}, 3},
      {{{"parallel.sp=2", "parallel.tp=2", "parallel.sequence_parallel=true",
         "model.mamba_hybrid.seq_len=34"},
        "model.mamba_hybrid.seq_len=34 must be divisible by parallel.sp=2 * parallel.tp = 4"},
       4},
      {{{"parallel.sp=4", "parallel.tp=2"},
        "model.mamba_hybrid.num_heads=4 must be divisible by parallel.tp * parallel.sp = 8"},
       8},
      {{{"parallel.sp=4", "model.mamba_hybrid.mamba_sp_mode=ALL_TO_ALL"},
        "model.mamba_hybrid.num_groups=2 must be divisible by parallel.tp * parallel.sp = 4 "
        "(model.mamba_hybrid.mamba_sp_mode=ALL_TO_ALL spreads each tp rank's heads and groups "
        "over sp)"},
       4},
      {{{"parallel.sp=4", "parallel.tp=2", "model.mamba_hybrid.mamba_sp_mode=ALL_TO_ALL",
         "model.mamba_hybrid.num_heads=8"},
        "the Mamba heads expand * hidden_size / head_dim = 4 must be divisible by parallel.tp * "
        "parallel.sp = 8"},
       8},
      {{{"parallel.sp=16", "model.mamba_hybrid.pattern=M-M-E"},
        "model.mamba_hybrid.seq_len=32 / parallel.sp=16 must be at least conv_width - 1 = 3"},
       16},
      {{{"parallel.ep=3", "train.global_batch=9"},
        "parallel.ep=3 must divide model.mamba_hybrid.moe.num_experts=4"},
       3},
      {{{"parallel.tp=2", "model.mamba_hybrid.seq_len=33"},
        "model.mamba_hybrid.seq_len=33 must be divisible by parallel.sp * parallel.tp = 2"},
       2},
  };
  for (const auto& [rule, world] : cases) {
    SCOPED_TRACE(rule.message);
    RunConfig config = Tiny();
    ASSERT_TRUE(ApplyOverrides(&config, rule.overrides).ok());
    const absl::Status status = ValidateRun(config, world);
    EXPECT_EQ(ExitCodeFor(status), 2);
    EXPECT_TRUE(absl::StrContains(status.message(), rule.message)) << status;
  }
}

TEST(MambaHybridConfigRules, ExpertParallelismWithoutExpertLayersIsRefused) {
  RunConfig config = Defaults();  // eight Mamba layers
  ASSERT_TRUE(ApplyOverrides(&config, {"parallel.ep=2"}).ok());
  const absl::Status status = ValidateRun(config, 2);
  EXPECT_EQ(ExitCodeFor(status), 2);
  EXPECT_TRUE(absl::StrContains(status.message(),
                                "parallel.ep=2: model.mamba_hybrid has no expert layers"))
      << status;
}

TEST(MambaHybridConfigRules, TheShippedConfigsValidate) {
  for (const char* name : {"mamba_hybrid_tiny", "mamba_hybrid_small", "mamba_hybrid_recall",
                           "mamba_hybrid_125m", "mamba_hybrid_8b"}) {
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
  // Every layer kind; the MoE layers' shared expert at its default width.
  for (bool tied : {true, false}) {
    RunConfig config = Defaults();
    ASSERT_TRUE(ApplyOverrides(&config, {"model.mamba_hybrid.pattern=M*-ME*EM",
                                         "model.mamba_hybrid.moe.num_experts=3",
                                         "model.mamba_hybrid.moe.expert_hidden=40",
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
